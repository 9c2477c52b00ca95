package origin_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

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
