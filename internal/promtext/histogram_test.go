package promtext

import (
	"fmt"
	"strings"
	"testing"
)

func TestHistogramsWrite(t *testing.T) {
	hs := NewHistograms(0.1, 1)
	for _, o := range []struct {
		route string
		v     float64
	}{{"nar", 0.05}, {"nar", 0.5}, {"nar", 5}, {"narinfo", 0.1}} {
		hs.Observe(o.route, o.v)
	}
	var b strings.Builder
	hs.Write(func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }, "x_seconds", "Time.")
	want := `# HELP x_seconds Time.
# TYPE x_seconds histogram
x_seconds_bucket{route="nar",le="0.1"} 1
x_seconds_bucket{route="nar",le="1"} 2
x_seconds_bucket{route="nar",le="+Inf"} 3
x_seconds_sum{route="nar"} 5.55
x_seconds_count{route="nar"} 3
x_seconds_bucket{route="narinfo",le="0.1"} 1
x_seconds_bucket{route="narinfo",le="1"} 1
x_seconds_bucket{route="narinfo",le="+Inf"} 1
x_seconds_sum{route="narinfo"} 0.1
x_seconds_count{route="narinfo"} 1
`
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
}
