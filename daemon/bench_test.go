package daemon_test

import (
	"context"
	"crypto/sha256"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
)

// benchNAR is NAR-like data: compressible runs mixed with noise, as binaries are.
func benchNAR(size int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, size)
	for i := 0; i < size; {
		n := min(size-i, 512+r.IntN(4096))
		if r.IntN(2) == 0 {
			for j := range n {
				b[i+j] = byte(r.Uint32())
			}
		} else {
			fill := byte(r.Uint32())
			for j := range n {
				b[i+j] = fill + byte(j%7)
			}
		}
		i += n
	}
	return b
}

// BenchmarkServeCachedNAR serves a NAR whose chunks are all in the local cache, through
// HTTP on loopback, and reports its speed as a ratio of the in-process limit measured in
// the same run: reading every chunk from the cache, decoding it and hashing with SHA-256.
func BenchmarkServeCachedNAR(b *testing.B) {
	const size = 64 << 20
	nar := benchNAR(size)
	c := cachetest.New(b, "bench-1")
	ni := c.Add(b, cachetest.HashPart("bench"), "bench-1.0", nar, "none")
	state := b.TempDir()

	cfg := daemon.Config{Upstreams: []string{c.Dir}, TrustedKeys: []string{c.PublicKey}, StateDir: state,
		Logger: slog.New(slog.DiscardHandler)}
	d, err := daemon.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, ln) }()
	url := "http://" + ln.Addr().String()
	get := func(path string) int64 {
		resp, err := http.Get(url + path)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
		}
		return n
	}
	get("/" + ni.HashPart() + ".narinfo")
	narPath := "/nar/" + manifest.Key(ni.NarHash) + ".nar"
	get(narPath) // warm: the whole NAR is cut into the local cache

	var serve time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if n := get(narPath); n != size {
			b.Fatalf("served %d bytes, want %d", n, size)
		}
		serve += time.Since(start)
	}
	b.StopTimer()
	cancel()
	<-done
	d.Close()

	// Baseline: the same chunks straight from the cache file, decoded and hashed.
	lc, err := localcache.Open(state+"/cache.db", localcache.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer lc.Close()
	raw, err := lc.GetManifest(manifest.Key(ni.NarHash))
	if err != nil {
		b.Fatal(err)
	}
	m, err := manifest.Parse(raw)
	if err != nil {
		b.Fatal(err)
	}
	codec, _ := chunk.NewCodec()
	defer codec.Close()
	var limit time.Duration
	for range b.N {
		start := time.Now()
		h := sha256.New()
		var buf []byte
		for _, e := range m.Entries {
			obj, err := lc.GetChunk(context.Background(), e.ID)
			if err != nil {
				b.Fatal(err)
			}
			buf, err = codec.Decode(buf[:0], obj, int(e.Size))
			if err != nil {
				b.Fatal(err)
			}
			h.Write(buf)
		}
		limit += time.Since(start)
	}
	b.ReportMetric(float64(size)*float64(b.N)/serve.Seconds()/1e6, "serve-MB/s")
	b.ReportMetric(float64(size)*float64(b.N)/limit.Seconds()/1e6, "limit-MB/s")
	b.ReportMetric(limit.Seconds()/serve.Seconds(), "serve/limit")
}

// BenchmarkNarInfoHit asks, from parallel clients over loopback HTTP, for one narinfo
// the daemon has cached, and reports its rate as a ratio of a static file server's
// (net/http's, serving the upstream's own narinfo file) measured in the same run: what
// a plain binary cache answers with.
func BenchmarkNarInfoHit(b *testing.B) {
	c := cachetest.New(b, "bench-1")
	ni := c.Add(b, cachetest.HashPart("bench"), "bench-1.0", []byte("a small NAR"), "none")
	d, err := daemon.New(daemon.Config{Upstreams: []string{c.Dir}, TrustedKeys: []string{c.PublicKey},
		StateDir: b.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()
	files := httptest.NewServer(http.FileServer(http.Dir(c.Dir)))
	defer files.Close()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	path := "/" + ni.HashPart() + ".narinfo"
	get := func(b *testing.B, url string) {
		resp, err := client.Get(url + path)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("GET %s: %d", url+path, resp.StatusCode)
		}
	}
	daemonURL := "http://" + ln.Addr().String()
	get(b, daemonURL)
	rate := func(url string) float64 {
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				get(b, url)
			}
		})
		return float64(b.N) / time.Since(start).Seconds()
	}
	b.SetParallelism(32)
	b.ResetTimer()
	shoal := rate(daemonURL)
	b.StopTimer()
	plain := rate(files.URL)
	b.ReportMetric(shoal, "shoal-req/s")
	b.ReportMetric(plain, "plain-req/s")
	b.ReportMetric(shoal/plain, "shoal/plain")
}
