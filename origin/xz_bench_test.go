package origin

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/internal/nixtest"
	"github.com/ulikunitz/xz"
)

// BenchmarkXZ measures the ways shoal serve could make an xz body for a NAR, on one
// core: the LZMA2 stored chunks it uses, the xz program at its fastest level in one
// thread, and the pure-Go ulikunitz/xz encoder. It reports each one's throughput (MB/s
// of NAR), the ratio of its output to the NAR, and its speed relative to the stored
// layout measured in the same run. SHOAL_BENCH_NAR names a real (uncompressed) NAR to
// use instead of the generated binary-like input.
func BenchmarkXZ(b *testing.B) {
	nar := benchNAR(b)
	xzProg, err := exec.LookPath("xz")
	if err != nil {
		b.Fatalf("the xz program is needed (Debian xz-utils): %v", err)
	}
	options := []struct {
		name   string
		encode func([]byte) []byte
	}{
		{"stored", xzBody},
		{"xz-0-T1", func(in []byte) []byte {
			cmd := exec.Command(xzProg, "-0", "-T1", "-c")
			cmd.Stdin = bytes.NewReader(in)
			out, err := cmd.Output()
			if err != nil {
				b.Fatal(err)
			}
			return out
		}},
		{"ulikunitz", func(in []byte) []byte {
			var buf bytes.Buffer
			w, err := xz.NewWriter(&buf)
			if err != nil {
				b.Fatal(err)
			}
			w.Write(in)
			w.Close()
			return buf.Bytes()
		}},
	}
	took := make([]time.Duration, len(options))
	sizes := make([]int, len(options))
	b.ResetTimer()
	for range b.N {
		for i, o := range options {
			start := time.Now()
			out := o.encode(nar)
			took[i] += time.Since(start)
			sizes[i] = len(out)
		}
	}
	b.StopTimer()
	for i, o := range options {
		mbps := float64(len(nar)) * float64(b.N) / 1e6 / took[i].Seconds()
		b.ReportMetric(mbps, o.name+"-MB/s")
		b.ReportMetric(float64(sizes[i])/float64(len(nar)), o.name+"-size-ratio")
		b.ReportMetric(took[0].Seconds()/took[i].Seconds(), o.name+"-speed-vs-stored")
	}
}

func benchNAR(b *testing.B) []byte {
	if p := os.Getenv("SHOAL_BENCH_NAR"); p != "" {
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		limit := int64(256 << 20)
		if testing.Short() {
			limit = 1 << 20
		}
		nar, err := io.ReadAll(io.LimitReader(f, limit))
		if err != nil {
			b.Fatal(err)
		}
		return nar
	}
	size := 32 << 20
	if testing.Short() {
		size = 1 << 20
	}
	return nixtest.PackageVersion(1, 1, size)["lib/libdemo.so"]
}
