package daemon_test

import (
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/publish"
	"github.com/shoal-nix/shoal/store"
	"github.com/shoal-nix/shoal/substituter"
)

// slowStore serves a store directory, delaying every chunk so the daemon cannot verify
// a NAR within its VerifyWait and has to stream.
func slowStore(t *testing.T, dir string, delay time.Duration) string {
	fs := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/chunks/") {
			time.Sleep(delay)
		}
		fs.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func noise(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// publishDir publishes every path of cache into a new store directory.
func publishDir(t *testing.T, cache *cachetest.Cache, infos ...*substituter.NarInfo) string {
	t.Helper()
	dir := t.TempDir()
	src, _ := blob.Open(cache.Dir, nil)
	dst, _ := store.Open(dir, nil)
	kr, _ := substituter.ParseKeyring([]string{cache.PublicKey})
	p, err := publish.New(substituter.NewBinaryCache(src), dst, kr, publish.Options{Params: chunk.DefaultParams()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var hps []string
	for _, ni := range infos {
		hps = append(hps, ni.HashPart())
	}
	if _, err := p.Run(context.Background(), hps); err != nil {
		t.Fatal(err)
	}
	return dir
}

// fetchNAR asks for a path's narinfo, then its NAR, and returns the status, the body
// and whether the body arrived whole.
func fetchNAR(t *testing.T, url string, ni *substituter.NarInfo) (int, []byte, error) {
	t.Helper()
	mustGet(t, url+"/"+ni.HashPart()+".narinfo", 200)
	resp, err := http.Get(url + "/nar/" + manifest.Key(ni.NarHash) + ".nar")
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func TestStreamsWhenVerificationIsSlow(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	ni := cache.Add(t, cachetest.HashPart("slow"), "slow-1.0", noise(1, 3<<20), "none")
	storeURL := slowStore(t, publishDir(t, cache, ni), 30*time.Millisecond)
	_, url := startDaemon(t, daemon.Config{
		StoreURL:    storeURL,
		Upstreams:   []string{"http://127.0.0.1:1"}, // dead: chunks are the only source
		TrustedKeys: []string{cache.PublicKey},
		VerifyWait:  time.Millisecond,
	})
	status, body, err := fetchNAR(t, url, ni)
	if err != nil || status != 200 {
		t.Fatalf("status %d, err %v", status, err)
	}
	if sha256.Sum256(body) != ni.NarHash {
		t.Fatal("streamed NAR does not match its NarHash")
	}
}

// TestLyingManifestNeverCompletesWrongBody serves a manifest whose chunks are genuine
// (each matches its ID) but assemble into another NAR. Only the final hash can tell;
// the daemon streams because verification is slow, so it must break the connection
// before the last byte.
func TestLyingManifestNeverCompletesWrongBody(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	a := cache.Add(t, cachetest.HashPart("a"), "a-1.0", noise(2, 2<<20), "none")
	b := cache.Add(t, cachetest.HashPart("b"), "b-1.0", noise(3, 2<<20), "none")
	dir := publishDir(t, cache, a, b)

	s, _ := store.Open(dir, nil)
	ma, _, err := s.Manifest(context.Background(), a.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	lie := *ma
	lie.NarHash = b.NarHash // a's chunks under b's name: sizes add up, hash does not
	raw, err := lie.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(store.ManifestKey(manifest.Key(b.NarHash)))), raw, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, wait := range []time.Duration{time.Millisecond, time.Minute} {
		t.Run(wait.String(), func(t *testing.T) {
			_, url := startDaemon(t, daemon.Config{
				StoreURL:    slowStore(t, dir, 10*time.Millisecond),
				Upstreams:   []string{"http://127.0.0.1:1"},
				TrustedKeys: []string{cache.PublicKey},
				VerifyWait:  wait,
			})
			status, body, err := fetchNAR(t, url, b)
			if status == 200 && err == nil {
				t.Fatalf("a complete 200 came back (%d bytes, matches NarHash: %v)", len(body), sha256.Sum256(body) == b.NarHash)
			}
			if status != 200 && status != 404 {
				t.Errorf("status %d; want 404, or a 200 whose connection breaks", status)
			}
			t.Logf("status %d, %d bytes, err %v", status, len(body), err)
		})
	}
}
