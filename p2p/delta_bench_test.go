package p2p

import (
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunk"
)

// BenchmarkServeDelta measures what a peer spends on one delta: the privacy check
// (parsing the verified manifests), reading and checking the target and its three
// bases, and encoding, for every new chunk of an upgrade, on one core as one encoder
// does. The baseline, measured in the same run on the same chunks, is compressing
// each chunk alone at the same zstd level, as publishing a full chunk does. Reported:
// delta-MB/s and plain-MB/s of chunk bytes, their time ratio, the delta bytes as a
// share of the chunk objects', and the time per delta of it all and of the privacy
// check alone.
//
// Synthetic releases by default (-short: 2 MiB); SHOAL_BENCH_DELTA_NARS=old.nar:new.nar
// takes two uncompressed NARs instead, e.g. consecutive releases of a package:
//
//	SHOAL_BENCH_DELTA_NARS=go-1.25.0.nar:go-1.25.1.nar go test -run '^$' -bench ServeDelta -benchtime 1x ./p2p
func BenchmarkServeDelta(b *testing.B) {
	var v1, v2 *nar
	if spec := os.Getenv("SHOAL_BENCH_DELTA_NARS"); spec != "" {
		old, cur, ok := strings.Cut(spec, ":")
		if !ok {
			b.Fatalf("SHOAL_BENCH_DELTA_NARS=%q: want old.nar:new.nar", spec)
		}
		read := func(path string) *nar {
			data, err := os.ReadFile(path)
			if err != nil {
				b.Fatal(err)
			}
			return narOf(b, data)
		}
		v1, v2 = read(old), read(cur)
	} else {
		size := 16 << 20
		if testing.Short() {
			size = 2 << 20
		}
		rs := releases(b, 111, size, 2)
		v1, v2 = rs[0], rs[1]
	}
	codec, err := chunk.NewCodec()
	if err != nil {
		b.Fatal(err)
	}
	defer codec.Close()
	n := &Node{
		cfg:   Config{Backend: backendOf([]*nar{v1, v2}, v1, v2)},
		log:   slog.New(slog.DiscardHandler),
		codec: codec,
	}
	n.deltas.Store(chunk.NewDeltaCodec(0, 1))
	defer n.deltas.Load().Close()
	var reqs []*deltaRequest
	var chunkBytes, objBytes int64
	for _, i := range newChunks(v1, v2) {
		e := v2.m.Entries[i]
		if e.Size > chunk.MaxDeltaChunk {
			continue
		}
		reqs = append(reqs, &deltaRequest{nar: v2.m.NarHash, baseNar: v1.m.NarHash, target: e.ID, bases: basesFor(v1, v2, i)})
		chunkBytes += int64(e.Size)
		objBytes += int64(len(v2.objs[e.ID]))
	}
	if len(reqs) == 0 {
		b.Fatal("the new release has no new chunks")
	}
	b.SetBytes(chunkBytes)
	b.ResetTimer()
	var deltaBytes int64
	refused := 0
	var check time.Duration
	began := time.Now()
	for range b.N {
		deltaBytes, refused = 0, 0
		for _, q := range reqs {
			t0 := time.Now()
			target, bases, ok := n.deltaSizes(q)
			check += time.Since(t0)
			if !ok {
				b.Fatalf("delta for %s refused", q.target)
			}
			body, err := n.computeDelta(b.Context(), q, target, bases)
			if err != nil {
				b.Fatal(err)
			}
			if body == nil { // no smaller than the chunk: the chunk would be sent
				refused++
				body = v2.objs[q.target]
			}
			deltaBytes += int64(len(body))
		}
	}
	deltaTime := time.Since(began)
	b.StopTimer()

	plain := time.Now()
	var out []byte
	for range b.N {
		for _, q := range reqs {
			out = codec.Encode(out[:0], v2.chunk[q.target])
		}
	}
	plainTime := time.Since(plain)
	mbs := func(d time.Duration) float64 { return float64(chunkBytes) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbs(deltaTime), "delta-MB/s")
	b.ReportMetric(mbs(plainTime), "plain-MB/s")
	b.ReportMetric(deltaTime.Seconds()/plainTime.Seconds(), "delta/plain-time")
	b.ReportMetric(float64(deltaBytes)/float64(objBytes), "delta/obj-bytes")
	b.ReportMetric(float64(deltaTime.Microseconds())/float64(b.N*len(reqs)), "µs/delta")
	b.ReportMetric(float64(check.Microseconds())/float64(b.N*len(reqs)), "µs/check")
	mb := func(n int64) float64 { return float64(n) / 1e6 }
	b.Logf("%d new chunks, %.1f MB raw, %.1f MB as objects, %.2f MB as deltas (%d sent whole, no smaller as a delta)",
		len(reqs), mb(chunkBytes), mb(objBytes), mb(deltaBytes), refused)
}
