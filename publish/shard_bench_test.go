package publish_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/publish"
)

// BenchmarkPublishSharded publishes one corpus (eight packages, three releases each,
// 4 MiB NARs, into a packed directory store) once unsharded and once as two workers,
// --shard 0/2 and 1/2, running at once on the same machine, and reports the NAR
// throughput of each and the ratio sharded/unsharded:
//
//	go test ./publish -run '^$' -bench PublishSharded -benchtime 3x
func BenchmarkPublishSharded(b *testing.B) {
	cache := cachetest.New(b, "test-1")
	var hps []string
	var narBytes int64
	for p := range 8 {
		nar := testkit.RandomBytes(uint64(7000+p), 4<<20)
		for v := range 3 {
			name := fmt.Sprintf("bench%d", p)
			ni := cache.Add(b, cachetest.HashPart(fmt.Sprint(name, v)), fmt.Sprintf("%s-1.%d", name, v), nar, "zstd")
			hps = append(hps, ni.HashPart())
			narBytes += int64(len(nar))
			nar = nextRelease(nar, byte(v+1), 256<<10)
		}
	}
	opts := publish.Options{Params: chunk.DefaultParams(), Jobs: 2, Deltas: true, Layout: chunkstore.FormatPacked}
	var one, two time.Duration
	for range b.N {
		start := time.Now()
		if _, err := runWith(b, cache, b.TempDir(), opts, hps...); err != nil {
			b.Fatal(err)
		}
		one += time.Since(start)

		dir := b.TempDir()
		start = time.Now()
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				o := opts
				o.Shard = publish.Shard{Index: i, Count: 2}
				_, errs[i] = runWith(b, cache, dir, o, hps...)
			}()
		}
		wg.Wait()
		two += time.Since(start)
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	mbps := func(d time.Duration) float64 { return float64(narBytes) * float64(b.N) / 1e6 / d.Seconds() }
	b.ReportMetric(mbps(one), "MB/s-unsharded")
	b.ReportMetric(mbps(two), "MB/s-2-shards")
	b.ReportMetric(one.Seconds()/two.Seconds(), "sharded/unsharded")
}
