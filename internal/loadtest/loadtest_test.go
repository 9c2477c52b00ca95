package loadtest_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/loadtest"
)

// TestLoadSmall runs the load driver at a small scale against a daemon in this process,
// so that `go test -race` sees many concurrent narinfo and NAR requests. It asserts
// that every answer was right, never how fast: Run fails on any wrong one.
func TestLoadSmall(t *testing.T) {
	c := cachetest.New(t, "load-1")
	var paths []loadtest.Path
	for i := range 6 {
		nar := make([]byte, 64<<10+i*100<<10)
		for j := range nar {
			nar[j] = byte(j*7 + i*13 + j>>9)
		}
		ni := c.Add(t, cachetest.HashPart(fmt.Sprint("load", i)), fmt.Sprintf("load-%d", i), nar, "zstd")
		paths = append(paths, loadtest.Path{HashPart: ni.HashPart(), NarHash: ni.NarHash, NarSize: ni.NarSize, URL: ni.URL, Compression: ni.EffectiveCompression()})
	}
	upstream := httptest.NewServer(http.FileServer(http.Dir(c.Dir)))
	defer upstream.Close()
	d, err := daemon.New(daemon.Config{
		StateDir:    t.TempDir(),
		Upstreams:   []string{upstream.URL},
		TrustedKeys: []string{c.PublicKey},
		Logger:      slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	}()

	// The baseline mode, straight at the cache, checks its answers the same way.
	if _, err := loadtest.Run(context.Background(), loadtest.Config{
		URL: upstream.URL, Direct: true, Paths: paths, Clients: 4, NarInfoOps: 10, MissRatio: 0.3, NarRounds: 1,
	}); err != nil {
		t.Fatalf("direct from the cache: %v", err)
	}
	rep, err := loadtest.Run(context.Background(), loadtest.Config{
		URL:        "http://" + ln.Addr().String(),
		Paths:      paths,
		Clients:    8,
		NarInfoOps: 40,
		MissRatio:  0.3,
		NarRounds:  2,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + rep.String())
	if rep.Cold.NARs != len(paths) || rep.Warm.NARs != 2*len(paths) {
		t.Errorf("NARs fetched: %d cold, %d warm; want %d and %d", rep.Cold.NARs, rep.Warm.NARs, len(paths), 2*len(paths))
	}
	if got := rep.NarInfoHit.Count + rep.NarInfoMiss.Count; got != 8*40 {
		t.Errorf("narinfo storm answered %d requests, want %d", got, 8*40)
	}
	if rep.NarInfoMiss.Count == 0 || rep.NarInfoHit.Count == 0 {
		t.Errorf("storm without both hits (%d) and misses (%d)", rep.NarInfoHit.Count, rep.NarInfoMiss.Count)
	}
}
