package dedup

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal/analyze/chart/charttest"
	"github.com/shoal-nix/shoal/chunk"
)

// The dedup chart shows every point: no label inside a panel, delta lines on a log
// axis, line styles as the legend names them, publish's default marked, and no
// empty band at the bottom.
func TestDedupSVGReadable(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	v1 := make([]byte, 600<<10)
	for i := range v1 {
		v1[i] = byte(rng.Uint32())
	}
	v2 := edited(v1, 1, 5000)
	h := func(c string) string { return "/nix/store/" + strings.Repeat(c, 32) + "-" }
	sources := []Source{memSource(h("a")+"pkg-1.0", v1, 610_000), memSource(h("b")+"pkg-1.1", v2, 610_000)}
	var cfgs []Config
	for _, avg := range []int{16 << 10, 64 << 10, 128 << 10} {
		cfgs = append(cfgs, Config{WholeNAR, chunk.Params{Min: avg / 4, Avg: avg, Max: avg * 4}})
	}
	res, err := Run(context.Background(), sources, Options{Configs: cfgs, Levels: []zstd.EncoderLevel{zstd.SpeedDefault}, Deltas: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := res.WriteSVG(&buf, 0); err != nil {
		t.Fatal(err)
	}
	els := charttest.Parse(t, buf.Bytes())
	svg := els[0]
	var panels [][4]float64 // x, y, w, h
	maxY := 0.0
	for _, e := range els[1:] {
		if e.Name == "rect" && e.Attrs["fill"] == "none" {
			panels = append(panels, [4]float64{e.Num(t, "x"), e.Num(t, "y"), e.Num(t, "width"), e.Num(t, "height")})
		}
		if e.Name == "text" {
			maxY = max(maxY, e.Num(t, "y"))
		}
	}
	if len(panels) != 2 {
		t.Fatalf("%d panels", len(panels))
	}
	var legend []string
	for i, e := range els {
		if e.Name != "text" {
			continue
		}
		x, y := e.Num(t, "x"), e.Num(t, "y")
		for _, p := range panels {
			if x > p[0] && x < p[0]+p[2] && y > p[1] && y < p[1]+p[3] {
				t.Errorf("label %q lies inside a panel, over its data", e.Text)
			}
		}
		// A legend entry is a line followed by its text.
		if i > 0 && els[i-1].Name == "line" && y > panels[0][1]+panels[0][3]+40 {
			line := els[i-1]
			legend = append(legend, e.Text)
			dash := line.Attrs["stroke-dasharray"]
			switch {
			case strings.Contains(e.Text, "dashed") && dash != deltaDash:
				t.Errorf("legend %q drawn with dasharray %q", e.Text, dash)
			case strings.Contains(e.Text, "dotted") && dash != refDots:
				t.Errorf("legend %q drawn with dasharray %q", e.Text, dash)
			}
		}
	}
	joined := strings.Join(legend, "\n")
	for _, want := range []string{"dashed, hollow points", "black, dotted: the source cache", "publish's default chunking"} {
		if !strings.Contains(joined, want) {
			t.Errorf("legend lacks %q:\n%s", want, joined)
		}
	}
	if !strings.Contains(buf.String(), "log scale") {
		t.Error("the upgrade panel with deltas is not on a log scale")
	}
	if h := svg.Num(t, "height"); h-maxY > 20 {
		t.Errorf("height %.0f, last text at %.0f: an empty band at the bottom", h, maxY)
	}
}
