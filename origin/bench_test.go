package origin_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/loadgen"
	"github.com/shoal-nix/shoal/internal/nixtest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/origin"
	"github.com/shoal-nix/shoal/publish"
)

// BenchmarkServe sends concurrent requests for warm NARs (verified, chunks in the
// in-memory cache) on each route and, in the same run, the same requests to a static
// file server on the original cache files. It reports NAR MB/s for both and their
// ratio: what reassembly costs against serving files that exist.
func BenchmarkServe(b *testing.B) {
	size := 16 << 20
	if testing.Short() {
		size = 1 << 20
	}
	for _, compression := range []string{"zstd", "xz", "none"} {
		b.Run(compression, func(b *testing.B) {
			cache := cachetest.New(b, "bench-1")
			var hps []string
			for v := range 4 {
				nar := nixtest.PackageVersion(3, v+1, size)["lib/libdemo.so"]
				hps = append(hps, cache.Add(b, cachetest.HashPart(fmt.Sprint(compression, v)), fmt.Sprintf("demo-%d", v), nar, compression).HashPart())
			}
			src, _ := blob.Open(cache.Dir, nil)
			storeDir := b.TempDir()
			st, _ := chunkstore.Open(storeDir, nil)
			kr, _ := nixcache.ParseKeyring([]string{cache.PublicKey})
			p, err := publish.New(nixcache.NewBinaryCache(src), st, kr, publish.Options{Params: chunk.DefaultParams()})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := p.Run(context.Background(), hps); err != nil {
				b.Fatal(err)
			}
			p.Close()
			s, err := origin.New(st, origin.Options{Keys: kr})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			hs := httptest.NewServer(s.Handler())
			defer hs.Close()
			static := httptest.NewServer(http.FileServer(http.Dir(cache.Dir)))
			defer static.Close()
			targets, err := loadgen.TargetsFromCache(cache.Dir)
			if err != nil {
				b.Fatal(err)
			}
			cfg := loadgen.Config{Targets: targets, Concurrency: 8, Requests: 32, Seed: 1}
			run := func(url string) *loadgen.Result {
				cfg.BaseURL = url
				res, err := loadgen.Run(context.Background(), cfg)
				if err != nil || res.ByStatus[200] != cfg.Requests {
					b.Fatalf("%s: %v, %v", url, res, err)
				}
				return res
			}
			run(hs.URL) // warm: verified, chunks cached
			b.ResetTimer()
			var served, baseline float64
			for range b.N {
				served += run(hs.URL).NarMBps()
				baseline += run(static.URL).NarMBps()
			}
			b.ReportMetric(served/float64(b.N), "serve-NAR-MB/s")
			b.ReportMetric(baseline/float64(b.N), "static-NAR-MB/s")
			b.ReportMetric(served/baseline, "serve/static")
		})
	}
}

// BenchmarkServeChains has shoal serve rebuild the newest of five releases, cold (a
// fresh server, nothing in its memory), from a delta-primary store, where most of its
// chunks are deltas on deltas, and in the same run from a packed store of full chunks.
// It reports NAR MB/s for both and their ratio.
func BenchmarkServeChains(b *testing.B) {
	size := 32 << 20
	if testing.Short() {
		size = 4 << 20
	}
	cache := cachetest.New(b, "bench-1")
	var hps []string
	for v := range 5 {
		nar := nixtest.PackageVersion(3, v+1, size)["lib/libdemo.so"]
		hps = append(hps, cache.Add(b, cachetest.HashPart(fmt.Sprint("chains", v)), fmt.Sprintf("demo-1.%d", v), nar, "zstd").HashPart())
	}
	src, _ := blob.Open(cache.Dir, nil)
	kr, _ := nixcache.ParseKeyring([]string{cache.PublicKey})
	stores := map[string]*chunkstore.Store{}
	for name, opts := range map[string]publish.Options{
		"full":          {Params: chunk.DefaultParams(), Deltas: true, Layout: chunkstore.FormatPacked},
		"delta-primary": {Params: chunk.DefaultParams(), Deltas: true, Layout: chunkstore.FormatPacked, DeltaPrimary: true},
	} {
		st, _ := chunkstore.Open(b.TempDir(), nil)
		p, err := publish.New(nixcache.NewBinaryCache(src), st, kr, opts)
		if err != nil {
			b.Fatal(err)
		}
		sum, err := p.Run(context.Background(), hps)
		p.Close()
		if err != nil {
			b.Fatal(err)
		}
		if opts.DeltaPrimary && sum.DeltaOnly == 0 {
			b.Fatalf("no chunk kept as a delta only: %+v", sum)
		}
		stores[name] = st
	}
	raw, _ := os.ReadFile(filepath.Join(cache.Dir, hps[len(hps)-1]+".narinfo"))
	ni, err := nixcache.ParseNarInfo(raw)
	if err != nil {
		b.Fatal(err)
	}
	rate := func(st *chunkstore.Store) float64 {
		s, err := origin.New(st, origin.Options{Keys: kr})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		hs := httptest.NewServer(s.Handler())
		defer hs.Close()
		start := time.Now()
		resp, err := hs.Client().Get(hs.URL + "/" + ni.URL)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || n == 0 {
			b.Fatalf("GET %s: %s, %d bytes, %v", ni.URL, resp.Status, n, err)
		}
		return float64(ni.NarSize) / 1e6 / time.Since(start).Seconds()
	}
	b.ResetTimer()
	var chains, full float64
	for range b.N {
		chains += rate(stores["delta-primary"])
		full += rate(stores["full"])
	}
	b.ReportMetric(chains/float64(b.N), "chains-NAR-MB/s")
	b.ReportMetric(full/float64(b.N), "full-NAR-MB/s")
	b.ReportMetric(chains/full, "chains/full")
}
