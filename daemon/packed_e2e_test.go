package daemon_test

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/internal/nginxtest"
	"github.com/shoal-nix/shoal/internal/s3test"
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
