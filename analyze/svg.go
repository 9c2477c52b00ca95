package analyze

import (
	"bufio"
	"cmp"
	"fmt"
	"html"
	"io"
	"math"
	"slices"
)

// Plot geometry, in SVG user units.
const (
	panelW, panelH = 420.0, 300.0
	marginL        = 70.0
	marginT        = 50.0
	gap            = 90.0
	legendH        = 22.0
)

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"}

// series is one line of the plot: configurations of one strategy whose Min
// and Max are the same multiples of Avg, ordered by Avg.
type series struct {
	label  string
	points []*ConfigResult
}

func (r *Result) series() []series {
	var out []series
	index := map[string]int{}
	for i := range r.Configs {
		c := &r.Configs[i]
		label := fmt.Sprintf("%s, min=avg×%s, max=avg×%s", c.Strategy,
			trimFloat(float64(c.Params.Min)/float64(c.Params.Avg)), trimFloat(float64(c.Params.Max)/float64(c.Params.Avg)))
		j, ok := index[label]
		if !ok {
			j = len(out)
			index[label] = j
			out = append(out, series{label: label})
		}
		out[j].points = append(out[j].points, c)
	}
	for _, s := range out {
		slices.SortStableFunc(s.points, func(a, b *ConfigResult) int { return cmp.Compare(a.Params.Avg, b.Params.Avg) })
	}
	return out
}

func trimFloat(f float64) string { return fmt.Sprintf("%g", f) }

// WriteSVG draws two panels against the average chunk size (log scale): the
// total stored bytes and the bytes of all upgrades after the first NAR, both at
// level index l, one line per strategy, with the source cache's size as a
// dashed reference where it is known. The SVG is self-contained.
func (r *Result) WriteSVG(w io.Writer, l int) error {
	bw := bufio.NewWriter(w)
	ss := r.series()
	width := 2*panelW + gap + marginL + 30
	height := marginT + panelH + 60 + legendH*float64(len(ss)+2)
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	fmt.Fprintf(bw, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(bw, `<text x="%.0f" y="20" font-size="14" font-weight="bold">%s</text>`+"\n", marginL,
		esc(fmt.Sprintf("shoal analyze dedup: %d NARs, %s MB uncompressed, zstd %s per chunk", len(r.NARs), mb(r.NarBytes()), r.Levels[l])))

	minAvg, maxAvg := math.MaxInt, 0
	for _, c := range r.Configs {
		minAvg, maxAvg = min(minAvg, c.Params.Avg), max(maxAvg, c.Params.Avg)
	}
	src, haveSrc := r.SourceFileSize()
	srcUp, haveSrcUp := r.SourceUpgrade()
	// alt, when set, is a second value per configuration drawn dashed in the
	// series' colour: the upgrade bytes with deltas.
	panels := []struct {
		title string
		value func(*ConfigResult) uint64
		alt   func(*ConfigResult) uint64
		ref   uint64
		ok    bool
	}{
		{"stored: unique chunks + manifests (MB)", func(c *ConfigResult) uint64 { return c.Total(l) }, nil, src, haveSrc},
		{"upgrade bytes after the first NAR (MB)", func(c *ConfigResult) uint64 { return c.Upgrades(l) }, nil, srcUp, haveSrcUp},
	}
	if r.HasDeltas() {
		panels[1].alt = func(c *ConfigResult) uint64 {
			_, deltas, _, _ := r.DeltaUpgrades(c, l)
			return deltas
		}
	}
	for p, panel := range panels {
		x0 := marginL + float64(p)*(panelW+gap)
		y0 := marginT
		var top uint64
		for _, c := range r.Configs {
			top = max(top, panel.value(&c))
			if panel.alt != nil {
				top = max(top, panel.alt(&c))
			}
		}
		if panel.ok {
			top = max(top, panel.ref)
		}
		ymax := niceCeil(float64(top) / 1e6)
		xOf := func(avg int) float64 {
			if maxAvg == minAvg {
				return x0 + panelW/2
			}
			return x0 + 20 + (panelW-40)*(math.Log2(float64(avg))-math.Log2(float64(minAvg)))/(math.Log2(float64(maxAvg))-math.Log2(float64(minAvg)))
		}
		yOf := func(v float64) float64 { return y0 + panelH - panelH*v/ymax }

		fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" font-weight="bold">%s</text>`+"\n", x0, y0-10, esc(panel.title))
		fmt.Fprintf(bw, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#444"/>`+"\n", x0, y0, panelW, panelH)
		for t := 0; t <= 5; t++ {
			v := ymax * float64(t) / 5
			y := yOf(v)
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", x0, y, x0+panelW, y)
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", x0-5, y+4, trimFloat(math.Round(v*10)/10))
		}
		for avg := minAvg; avg <= maxAvg && avg > 0; avg *= 2 {
			x := xOf(avg)
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", x, y0, x, y0+panelH)
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, y0+panelH+16, FormatSize(avg))
		}
		fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle">average chunk size (bytes)</text>`+"\n", x0+panelW/2, y0+panelH+34)
		if panel.ok {
			y := yOf(float64(panel.ref) / 1e6)
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000" stroke-dasharray="6,4"/>`+"\n", x0, y, x0+panelW, y)
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="end">source cache %s MB</text>`+"\n", x0+panelW-4, y-4, mb(panel.ref))
		}
		for i, s := range ss {
			color := palette[i%len(palette)]
			fmt.Fprintf(bw, `<polyline fill="none" stroke="%s" stroke-width="2" points="`, color)
			for j, c := range s.points {
				if j > 0 {
					fmt.Fprint(bw, " ")
				}
				fmt.Fprintf(bw, "%.1f,%.1f", xOf(c.Params.Avg), yOf(float64(panel.value(c))/1e6))
			}
			fmt.Fprint(bw, `"/>`+"\n")
			for _, c := range s.points {
				fmt.Fprintf(bw, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s: %s MB</title></circle>`+"\n",
					xOf(c.Params.Avg), yOf(float64(panel.value(c))/1e6), color, esc(c.Config.String()), mb(panel.value(c)))
			}
			if panel.alt == nil {
				continue
			}
			fmt.Fprintf(bw, `<polyline fill="none" stroke="%s" stroke-width="2" stroke-dasharray="3,3" points="`, color)
			for j, c := range s.points {
				if j > 0 {
					fmt.Fprint(bw, " ")
				}
				fmt.Fprintf(bw, "%.1f,%.1f", xOf(c.Params.Avg), yOf(float64(panel.alt(c))/1e6))
			}
			fmt.Fprint(bw, `"/>`+"\n")
			for _, c := range s.points {
				fmt.Fprintf(bw, `<circle cx="%.1f" cy="%.1f" r="3" fill="white" stroke="%s"><title>%s with deltas: %s MB</title></circle>`+"\n",
					xOf(c.Params.Avg), yOf(float64(panel.alt(c))/1e6), color, esc(c.Config.String()), mb(panel.alt(c)))
			}
		}
	}
	ly := marginT + panelH + 60
	for i, s := range ss {
		y := ly + legendH*float64(i)
		fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"/>`+"\n", marginL, y, marginL+30, y, palette[i%len(palette)])
		fmt.Fprintf(bw, `<text x="%.1f" y="%.1f">%s</text>`+"\n", marginL+38, y+4, esc(s.label))
	}
	if r.HasDeltas() {
		y := ly + legendH*float64(len(ss))
		fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444" stroke-width="2" stroke-dasharray="3,3"/>`+"\n", marginL, y, marginL+30, y)
		fmt.Fprintf(bw, `<text x="%.1f" y="%.1f">dashed: the NARs with an earlier version, fetched as deltas against it</text>`+"\n", marginL+38, y+4)
	}
	fmt.Fprint(bw, "</svg>\n")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing SVG: %w", err)
	}
	return nil
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten, so the axis has
// round ticks.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func esc(s string) string { return html.EscapeString(s) }
