package retire_test

import (
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/chunkstore/retire"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/s3test"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/origin"
	"github.com/shoal-nix/shoal/publish"
)

// The production shape: the main cache and the store are buckets. Retire deletes the
// old NAR object from the cache bucket, and serve answers for it from the store bucket.
func TestRetireS3(t *testing.T) {
	ctx := context.Background()
	srv := s3test.Start(t)
	cacheBucket, storeBucket := srv.Bucket(t, "cache"), srv.Bucket(t, "chunks")
	local := cachetest.New(t, "test-1")
	old := local.Add(t, cachetest.HashPart("old"), "old", testkit.RandomBytes(1, 80<<10), "zstd")
	cur := local.Add(t, cachetest.HashPart("cur"), "cur", testkit.RandomBytes(2, 80<<10), "zstd")
	cache, err := blob.Open(srv.URL(cacheBucket, ""), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(local.Dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(local.Dir, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return cache.Put(ctx, filepath.ToSlash(rel), data)
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := chunkstore.Open(srv.URL(storeBucket, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	kr, _ := nixcache.ParseKeyring([]string{local.PublicKey})
	p, err := publish.New(nixcache.NewBinaryCache(cache), st, kr, publish.Options{Params: chunk.Params{Min: 1 << 10, Avg: 4 << 10, Max: 16 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Run(ctx, []string{old.HashPart(), cur.HashPart()}); err != nil {
		t.Fatal(err)
	}
	p.Close()

	rep, err := retire.Run(ctx, cache, st, retire.Options{Keep: func(hp string) bool { return hp == cur.HashPart() }, Keys: kr, Apply: true})
	if err != nil || rep.Retired != 1 || rep.FreedBytes != int64(old.FileSize) {
		t.Fatalf("retire: %+v, %v", rep, err)
	}
	keys := srv.Keys(t, cacheBucket)
	if slices.Contains(keys, old.URL) || !slices.Contains(keys, cur.URL) || !slices.Contains(keys, old.HashPart()+".narinfo") {
		t.Fatalf("cache bucket after retire: %q", keys)
	}

	s, err := origin.New(st, origin.Options{Keys: kr})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	hs := httptest.NewServer(s.Handler())
	defer hs.Close()
	resp, err := hs.Client().Get(hs.URL + "/" + old.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	d, _ := zstd.NewReader(nil)
	defer d.Close()
	nar, err := d.DecodeAll(body, nil)
	if resp.StatusCode != 200 || err != nil || !bytes.Equal(nar, testkit.RandomBytes(1, 80<<10)) {
		t.Fatalf("serving the retired NAR from the store bucket: %s, %v", resp.Status, err)
	}
}
