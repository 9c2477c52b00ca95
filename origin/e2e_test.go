package origin_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/chunkstore/retire"
	"github.com/shoal-nix/shoal/internal/nginxtest"
	"github.com/shoal-nix/shoal/internal/nixtest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/origin"
	"github.com/shoal-nix/shoal/publish"
)

// nginx plays the CDN: it serves the main cache directory and sends requests for NARs
// it does not have to shoal serve. This is the snippet docs/serve.md shows.
const (
	nginxUpstream = `upstream shoal_serve { server %s; keepalive 16; }`
	nginxFallback = `location /nar/ {
      error_page 404 = @shoal;
    }
    location @shoal {
      proxy_pass http://shoal_serve;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }`
)

// The whole drop-in: publish a cache, retire some NARs from it, and a stock Nix
// substitutes every path through nginx, the retired ones through the 404 fallback to
// shoal serve, in both xz and zstd. From a delta-primary store the newer release is
// the one retired: shoal serve rebuilds its chunks from their chains.
func TestNginxFallbackE2E(t *testing.T) {
	tests := []struct {
		name   string
		opts   publish.Options
		retire string // the version whose NARs are retired
	}{
		{"one object per chunk", publish.Options{}, "1.0"},
		{"delta-primary", publish.Options{Deltas: true, Layout: chunkstore.FormatPacked, DeltaPrimary: true, MaxChain: 4}, "1.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { testNginxFallback(t, tc.opts, tc.retire) })
	}
}

func testNginxFallback(t *testing.T, opts publish.Options, retired string) {
	env := nixtest.NewEnv(t)
	ctx := context.Background()
	sk, pk := env.GenerateKey(t, "shoal-serve-test-1")
	cacheDir, storeDir := t.TempDir(), t.TempDir()
	paths := map[string]string{}
	for name, files := range map[string]map[string][]byte{
		"xzdemo-1.0":  nixtest.PackageVersion(11, 1, 1<<20),
		"xzdemo-1.1":  nixtest.PackageVersion(11, 2, 1<<20),
		"zstdemo-1.0": nixtest.PackageVersion(12, 1, 1<<20),
		"zstdemo-1.1": nixtest.PackageVersion(12, 2, 1<<20),
	} {
		paths[name] = env.AddPath(t, name, files)
	}
	var all []string
	for _, p := range paths {
		all = append(all, p)
	}
	env.Sign(t, sk, all...)
	env.CopyToCache(t, cacheDir, "xz", paths["xzdemo-1.0"], paths["xzdemo-1.1"])
	env.CopyToCache(t, cacheDir, "zstd", paths["zstdemo-1.0"], paths["zstdemo-1.1"])

	src, _ := blob.Open(cacheDir, nil)
	st, _ := chunkstore.Open(storeDir, nil)
	kr, _ := nixcache.ParseKeyring([]string{pk})
	opts.Params, opts.Jobs = chunk.DefaultParams(), 2
	p, err := publish.New(nixcache.NewBinaryCache(src), st, kr, opts)
	if err != nil {
		t.Fatal(err)
	}
	hp := func(name string) string { h, _ := nixcache.ParseHashPart(paths[name]); return h }
	var hps []string
	for name := range paths {
		hps = append(hps, hp(name))
	}
	sum, err := p.Run(ctx, hps)
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	if opts.DeltaPrimary && sum.DeltaOnly == 0 {
		t.Fatalf("a delta-primary publish of two releases kept no chunk as a delta only: %+v", sum)
	}

	kept := "1.1"
	if retired == "1.1" {
		kept = "1.0"
	}
	keep := map[string]bool{hp("xzdemo-" + kept): true, hp("zstdemo-" + kept): true}
	rep, err := retire.Run(ctx, src, st, retire.Options{Keep: func(h string) bool { return keep[h] }, Keys: kr, Apply: true})
	if err != nil || rep.Retired != 2 || rep.Kept != 2 {
		t.Fatalf("retire: %+v, %v", rep, err)
	}
	for _, name := range []string{"xzdemo-" + retired, "zstdemo-" + retired} {
		raw, _ := os.ReadFile(filepath.Join(cacheDir, hp(name)+".narinfo"))
		ni, _ := nixcache.ParseNarInfo(raw)
		if _, err := os.Stat(filepath.Join(cacheDir, ni.URL)); !os.IsNotExist(err) {
			t.Fatalf("%s: NAR file still in the cache after retire: %v", name, err)
		}
	}

	srv, err := origin.New(st, origin.Options{Keys: kr, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, ln, 5*time.Second) }()
	t.Cleanup(func() { stop(); <-served; srv.Close() })

	ngx := nginxtest.Start(t, cacheDir, fmt.Sprintf(nginxUpstream, ln.Addr().String()), nginxFallback)
	url, accessLog := ngx.URL, ngx.AccessLog
	root := filepath.Join(t.TempDir(), "root")
	if out, err := env.CopyFrom(ctx, url, pk, root, all...); err != nil {
		t.Fatalf("nix copy through nginx: %v\n%s", err, out)
	}
	if out, err := env.Verify(ctx, root, all...); err != nil {
		t.Fatalf("nix store verify: %v\n%s", err, out)
	}
	m := srv.Metrics()
	if n := m.Requests("nar.xz", 200); n != 1 {
		t.Errorf("serve answered %d xz NARs, want the 1 retired", n)
	}
	if n := m.Requests("nar.zst", 200); n != 1 {
		t.Errorf("serve answered %d zstd NARs, want the 1 retired", n)
	}
	log, _ := os.ReadFile(accessLog)
	if c := strings.Count(string(log), "\"GET /nar/"); c != 4 {
		t.Errorf("nginx logged %d NAR requests, want 4:\n%s", c, log)
	}
}
