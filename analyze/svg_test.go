package analyze

import (
	"bytes"
	"context"
	"encoding/xml"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal/chunk"
)

// svgElement is one element of a drawn SVG, with its attributes and text.
type svgElement struct {
	name  string
	attrs map[string]string
	text  string
}

func (e svgElement) num(t *testing.T, attr string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(e.attrs[attr], 64)
	if err != nil {
		t.Fatalf("<%s %s=%q>: %v", e.name, attr, e.attrs[attr], err)
	}
	return v
}

func parseSVG(t *testing.T, svg []byte) []svgElement {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(svg))
	var out []svgElement
	var open []int
	for {
		tk, err := d.Token()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed: %v", err)
		}
		switch tk := tk.(type) {
		case xml.StartElement:
			e := svgElement{name: tk.Name.Local, attrs: map[string]string{}}
			for _, a := range tk.Attr {
				e.attrs[a.Name.Local] = a.Value
			}
			out = append(out, e)
			open = append(open, len(out)-1)
		case xml.CharData:
			if len(open) > 0 {
				out[open[len(open)-1]].text += string(tk)
			}
		case xml.EndElement:
			open = open[:len(open)-1]
		}
	}
}

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
	els := parseSVG(t, buf.Bytes())
	svg := els[0]
	var panels [][4]float64 // x, y, w, h
	maxY := 0.0
	for _, e := range els[1:] {
		if e.name == "rect" && e.attrs["fill"] == "none" {
			panels = append(panels, [4]float64{e.num(t, "x"), e.num(t, "y"), e.num(t, "width"), e.num(t, "height")})
		}
		if e.name == "text" {
			maxY = max(maxY, e.num(t, "y"))
		}
	}
	if len(panels) != 2 {
		t.Fatalf("%d panels", len(panels))
	}
	var legend []string
	for i, e := range els {
		if e.name != "text" {
			continue
		}
		x, y := e.num(t, "x"), e.num(t, "y")
		for _, p := range panels {
			if x > p[0] && x < p[0]+p[2] && y > p[1] && y < p[1]+p[3] {
				t.Errorf("label %q lies inside a panel, over its data", e.text)
			}
		}
		// A legend entry is a line followed by its text.
		if i > 0 && els[i-1].name == "line" && y > panels[0][1]+panels[0][3]+40 {
			line := els[i-1]
			legend = append(legend, e.text)
			dash := line.attrs["stroke-dasharray"]
			switch {
			case strings.Contains(e.text, "dashed") && dash != deltaDash:
				t.Errorf("legend %q drawn with dasharray %q", e.text, dash)
			case strings.Contains(e.text, "dotted") && dash != refDots:
				t.Errorf("legend %q drawn with dasharray %q", e.text, dash)
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
	if h := svg.num(t, "height"); h-maxY > 20 {
		t.Errorf("height %.0f, last text at %.0f: an empty band at the bottom", h, maxY)
	}
}

// In the logs chart, request counts get whole ticks, and a scenario whose line is
// the same as an earlier one's is drawn so both show, and named as such.
func TestLogsSVGReadable(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rep := &LogReport{
		Lines: 3, First: at, Last: at.Add(2 * time.Minute), NAR: Count{3, 3000},
		Scenarios: []ScenarioResult{{Name: "30d", OlderThan: 30 * 24 * time.Hour, PeakRequests: 2}, {Name: "90d", OlderThan: 90 * 24 * time.Hour, PeakRequests: 2}},
	}
	for i := range 3 {
		c := Count{uint64(i % 3), 1000}
		rep.Minutes = append(rep.Minutes, Minute{At: at.Add(time.Duration(i) * time.Minute), Retired: []Count{c, c}})
	}
	var buf bytes.Buffer
	if err := rep.WriteSVG(&buf); err != nil {
		t.Fatal(err)
	}
	els := parseSVG(t, buf.Bytes())
	var lines []svgElement
	for _, e := range els {
		if e.name == "polyline" && e.attrs["stroke-width"] == "1.5" {
			lines = append(lines, e)
		}
		if e.name == "text" && e.attrs["text-anchor"] == "end" && e.num(t, "x") < marginL {
			if v, err := strconv.ParseFloat(strings.TrimSpace(e.text), 64); err == nil && v != float64(int(v)) {
				t.Errorf("tick %q on the requests axis is not a whole number", e.text)
			}
		}
	}
	if len(lines) != 2 || lines[1].attrs["stroke-dasharray"] == "" {
		t.Errorf("the second of two identical lines is drawn solid over the first: %+v", lines)
	}
	if !strings.Contains(buf.String(), "the same line as 30d") {
		t.Error("the legend does not say that 90d's line is 30d's")
	}
}
