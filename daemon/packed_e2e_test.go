package daemon_test

import (
	"bufio"
	"context"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/chunkstore/maintain"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/internal/nginxtest"
	"github.com/shoal-nix/shoal/internal/nixtest"
	"github.com/shoal-nix/shoal/internal/s3test"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

// TestNixSubstitutesFromPackedStore has a real Nix substitute a package cold, then its
// next version as an upgrade, through a daemon whose only source is a packed store (the
// upstream is dead) behind nginx, which answers Range requests as a CDN does, and in
// MinIO, read with ranged GetObject.
func TestNixSubstitutesFromPackedStore(t *testing.T) {
	packed := publish.Options{Deltas: true, Layout: chunkstore.FormatPacked}
	tests := []struct {
		name string
		// store publishes the fixture into a packed store and returns its URL and a
		// function counting the requests it has answered so far (nil: not counted).
		store func(t *testing.T, f *fixture) (url string, requests func() int)
	}{
		{name: "nginx", store: func(t *testing.T, f *fixture) (string, func() int) {
			dir := t.TempDir()
			f.publishTo(t, dir, packed, f.pk)
			ngx := nginxtest.Start(t, dir, "", "")
			return ngx.URL, func() int { return countLines(t, ngx.AccessLog) }
		}},
		{name: "s3", store: func(t *testing.T, f *fixture) (string, func() int) {
			s3 := s3test.Start(t)
			url := s3.URL(s3.Bucket(t, "shoal-packed"), "store")
			f.publishTo(t, url, packed, f.pk)
			return url, nil
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			url, requests := tc.store(t, f)
			d, daemonURL := startDaemon(t, daemon.Config{
				StoreURL:    url,
				Upstreams:   []string{"http://127.0.0.1:1"}, // dead: the packed store is the only source
				TrustedKeys: []string{f.pk},
			})
			f.copyAndVerify(t, daemonURL, "demo-1.0", "notes")
			before := 0
			if requests != nil {
				before = requests()
			}
			f.copyAndVerify(t, daemonURL, "demo-1.1")
			if d.Metrics().Bytes("store"+fetch.DeltaSuffix) == 0 {
				t.Error("the upgrade fetched no deltas")
			}
			if n := d.Metrics().Events(fetch.EventDeltaFailed); n != 0 {
				t.Errorf("%d deltas failed against a correct store", n)
			}
			if requests != nil {
				// The narinfo, the manifest and a few ranged reads of the packs.
				n := requests() - before
				t.Logf("upgrade: %d requests to the store", n)
				if n > 20 {
					t.Errorf("the upgrade took %d store requests, want at most 20", n)
				}
			}
		})
	}
}

// countLines counts the lines of an access log.
func countLines(t *testing.T, path string) int {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	n := 0
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) != "" {
			n++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestNixSubstitutesDuringPackedGC runs a publish, gc with repacking (in a loop) and a
// real Nix substituting through fresh daemons, all at once, on one packed store: no
// substitution may fail. The upstream is dead, so every NAR comes from the packs being
// rewritten and deleted underneath.
func TestNixSubstitutesDuringPackedGC(t *testing.T) {
	f := newFixture(t)
	storeDir := t.TempDir()
	// Small packs, so each path spans several and repacking has work to do.
	opts := publish.Options{Deltas: true, Layout: chunkstore.FormatPacked, PackSize: 256 << 10}
	f.publishTo(t, storeDir, opts, f.pk)
	st, err := chunkstore.Open(storeDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A path published while gc runs.
	f.paths["extra"] = f.env.AddPath(t, "extra", nixtest.PackageVersion(9, 1, 1<<20))
	f.env.Sign(t, f.sk, f.paths["extra"])
	f.env.CopyToCache(t, f.cacheDir, "xz", f.paths["extra"])
	dropped, _ := nixcache.ParseHashPart(f.paths["demo-1.0"])
	const grace = 2 * time.Second
	time.Sleep(grace) // gc touches nothing younger

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var (
		wg       sync.WaitGroup
		repacked atomic.Int64
		deleted  atomic.Int64
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			rep, err := maintain.Collect(ctx, st, maintain.Options{
				Keep:        func(hp string) bool { return hp != dropped },
				Grace:       grace,
				RepackBelow: 0.99,
			})
			if err != nil && ctx.Err() == nil {
				t.Errorf("gc: %v", err)
				return
			}
			repacked.Add(rep.Packs.Repacked)
			deleted.Add(rep.Packs.Deleted.Deleted)
			select {
			case <-ctx.Done():
			case <-time.After(300 * time.Millisecond):
			}
		}
	}()
	go func() {
		defer wg.Done()
		f.publishTo(t, storeDir, opts, f.pk)
	}()
	// Substitute until gc has both repacked packs and deleted the old ones (a grace
	// period after), at least four times, for at most a minute.
	until := time.Now().Add(time.Minute)
	for round := 0; round < 4 || (time.Now().Before(until) && (repacked.Load() == 0 || deleted.Load() == 0)); round++ {
		_, url := startDaemon(t, daemon.Config{
			StoreURL:    storeDir,
			Upstreams:   []string{"http://127.0.0.1:1"},
			TrustedKeys: []string{f.pk},
		})
		f.copyAndVerify(t, url, "demo-1.1", "notes")
		t.Logf("round %d: %d packs repacked, %d deleted so far", round, repacked.Load(), deleted.Load())
	}
	stop()
	wg.Wait()
	_, url := startDaemon(t, daemon.Config{StoreURL: storeDir, Upstreams: []string{"http://127.0.0.1:1"}, TrustedKeys: []string{f.pk}})
	f.copyAndVerify(t, url, "demo-1.1", "notes", "extra")
	if repacked.Load() == 0 || deleted.Load() == 0 {
		t.Errorf("gc repacked %d and deleted %d packs while Nix substituted; the test needs both", repacked.Load(), deleted.Load())
	}
}
