package dedup

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"

	"github.com/shoal-nix/shoal/analyze/chart"
	"github.com/shoal-nix/shoal/chunk"
)

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
			chart.TrimFloat(float64(c.Params.Min)/float64(c.Params.Avg)), chart.TrimFloat(float64(c.Params.Max)/float64(c.Params.Avg)))
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

// deltaDash is the dash pattern of the delta lines: long enough to read as dashes,
// as the legend calls them.
const deltaDash = "8,4"

// refDots is the dot pattern of the source cache's reference lines.
const refDots = "2,3"

// WriteSVG draws two panels against the average chunk size (log scale): the
// total stored bytes and the bytes of all upgrades after the first NAR, both at
// level index l, one line per strategy. With deltas, the upgrade panel's y axis is
// logarithmic, since deltas are orders of magnitude below full chunks. The source
// cache's sizes are dashed black references and publish's default chunking a grey
// vertical line, both named in the legend below the panels, where no label can hide
// a data point. The SVG is self-contained.
func (r *Result) WriteSVG(w io.Writer, l int) error {
	bw := bufio.NewWriter(w)
	ss := r.series()
	minAvg, maxAvg := math.MaxInt, 0
	for _, c := range r.Configs {
		minAvg, maxAvg = min(minAvg, c.Params.Avg), max(maxAvg, c.Params.Avg)
	}
	src, haveSrc := r.SourceFileSize()
	srcUp, haveSrcUp := r.SourceUpgrade()
	publishAvg := chunk.DefaultParams().Avg
	markPublish := minAvg <= publishAvg && publishAvg <= maxAvg

	legendRows := len(ss)
	if r.HasDeltas() {
		legendRows++
	}
	if haveSrc || haveSrcUp {
		legendRows++
	}
	if markPublish {
		legendRows++
	}
	ly := chart.MarginT + chart.PanelH + 56
	width := 2*chart.PanelW + chart.Gap + chart.MarginL + 20
	height := ly + chart.LegendH*float64(legendRows-1) + 14
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	fmt.Fprintf(bw, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(bw, `<text x="%.0f" y="20" font-size="14" font-weight="bold">%s</text>`+"\n", chart.MarginL,
		chart.Esc(fmt.Sprintf("shoal analyze dedup: %d NARs, %s MB uncompressed, zstd %s per chunk", len(r.NARs), mb(r.NarBytes()), r.Levels[l])))

	// alt, when set, is a second value per configuration drawn dashed in the
	// series' colour: the upgrade bytes with deltas.
	panels := []struct {
		title string
		value func(*ConfigResult) uint64
		alt   func(*ConfigResult) uint64
		ref   uint64
		ok    bool
		log   bool
	}{
		{"stored: unique chunks + manifests (MB)", func(c *ConfigResult) uint64 { return c.Total(l) }, nil, src, haveSrc, false},
		{"upgrade bytes after the first NAR (MB)", func(c *ConfigResult) uint64 { return c.Upgrades(l) }, nil, srcUp, haveSrcUp, false},
	}
	if r.HasDeltas() {
		panels[1].alt = func(c *ConfigResult) uint64 {
			_, deltas, _, _ := r.DeltaUpgrades(c, l)
			return deltas
		}
		panels[1].log = true
		panels[1].title = "upgrade bytes after the first NAR (MB, log scale)"
	}
	for p, panel := range panels {
		x0 := chart.MarginL + float64(p)*(chart.PanelW+chart.Gap)
		y0 := chart.MarginT
		var top uint64
		bottom := uint64(math.MaxUint64)
		note := func(v uint64) {
			top = max(top, v)
			if v > 0 {
				bottom = min(bottom, v)
			}
		}
		for _, c := range r.Configs {
			note(panel.value(&c))
			if panel.alt != nil {
				note(panel.alt(&c))
			}
		}
		if panel.ok {
			note(panel.ref)
		}
		var yOf func(v float64) float64
		var ticks []float64
		if panel.log && bottom != math.MaxUint64 {
			lo := math.Pow(10, math.Floor(math.Log10(float64(bottom)/1e6)))
			hi := math.Pow(10, math.Ceil(math.Log10(float64(top)/1e6)))
			if hi <= lo {
				hi = lo * 10
			}
			yOf = func(v float64) float64 {
				v = max(v, lo)
				return y0 + chart.PanelH - chart.PanelH*(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))
			}
			for t := lo; t <= hi*1.0001; t *= 10 {
				ticks = append(ticks, t)
			}
		} else {
			ymax := chart.NiceCeil(float64(top) / 1e6)
			yOf = func(v float64) float64 { return y0 + chart.PanelH - chart.PanelH*v/ymax }
			for t := 0; t <= 5; t++ {
				ticks = append(ticks, ymax*float64(t)/5)
			}
		}
		xOf := func(avg int) float64 {
			if maxAvg == minAvg {
				return x0 + chart.PanelW/2
			}
			return x0 + 20 + (chart.PanelW-40)*(math.Log2(float64(avg))-math.Log2(float64(minAvg)))/(math.Log2(float64(maxAvg))-math.Log2(float64(minAvg)))
		}

		fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" font-weight="bold">%s</text>`+"\n", x0, y0-10, chart.Esc(panel.title))
		fmt.Fprintf(bw, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#444"/>`+"\n", x0, y0, chart.PanelW, chart.PanelH)
		for _, v := range ticks {
			y := yOf(v)
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", x0, y, x0+chart.PanelW, y)
			label := chart.TrimFloat(math.Round(v*10) / 10)
			if panel.log {
				label = chart.TrimFloat(v)
			}
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", x0-5, y+4, label)
		}
		for avg := minAvg; avg <= maxAvg && avg > 0; avg *= 2 {
			x := xOf(avg)
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", x, y0, x, y0+chart.PanelH)
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, y0+chart.PanelH+16, FormatSize(avg))
		}
		fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle">average chunk size (bytes)</text>`+"\n", x0+chart.PanelW/2, y0+chart.PanelH+34)
		if markPublish {
			x := xOf(publishAvg)
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999" stroke-width="2"><title>publish's default: %s average</title></line>`+"\n", x, y0, x, y0+chart.PanelH, FormatSize(publishAvg))
		}
		if panel.ok {
			y := yOf(float64(panel.ref) / 1e6)
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000" stroke-dasharray="%s"><title>source cache %s MB</title></line>`+"\n", x0, y, x0+chart.PanelW, y, refDots, mb(panel.ref))
		}
		for i, s := range ss {
			color := chart.Palette[i%len(chart.Palette)]
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
					xOf(c.Params.Avg), yOf(float64(panel.value(c))/1e6), color, chart.Esc(c.Config.String()), mb(panel.value(c)))
			}
			if panel.alt == nil {
				continue
			}
			fmt.Fprintf(bw, `<polyline fill="none" stroke="%s" stroke-width="2" stroke-dasharray="%s" points="`, color, deltaDash)
			for j, c := range s.points {
				if j > 0 {
					fmt.Fprint(bw, " ")
				}
				fmt.Fprintf(bw, "%.1f,%.1f", xOf(c.Params.Avg), yOf(float64(panel.alt(c))/1e6))
			}
			fmt.Fprint(bw, `"/>`+"\n")
			for _, c := range s.points {
				fmt.Fprintf(bw, `<circle cx="%.1f" cy="%.1f" r="3" fill="white" stroke="%s"><title>%s with deltas: %s MB</title></circle>`+"\n",
					xOf(c.Params.Avg), yOf(float64(panel.alt(c))/1e6), color, chart.Esc(c.Config.String()), mb(panel.alt(c)))
			}
		}
	}
	row := 0
	legend := func(stroke, dash, text string) {
		y := ly + chart.LegendH*float64(row)
		row++
		attr := ""
		if dash != "" {
			attr = fmt.Sprintf(` stroke-dasharray="%s"`, dash)
		}
		fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`+"\n", chart.MarginL, y, chart.MarginL+30, y, stroke, attr)
		fmt.Fprintf(bw, `<text x="%.1f" y="%.1f">%s</text>`+"\n", chart.MarginL+38, y+4, chart.Esc(text))
	}
	for i, s := range ss {
		legend(chart.Palette[i%len(chart.Palette)], "", s.label)
	}
	if r.HasDeltas() {
		legend("#444", deltaDash, "dashed, hollow points: the NARs with an earlier version, fetched as deltas against it")
	}
	if haveSrc || haveSrcUp {
		var parts []string
		if haveSrc {
			parts = append(parts, mb(src)+" MB stored")
		}
		if haveSrcUp {
			parts = append(parts, mb(srcUp)+" MB of upgrades")
		}
		legend("#000", refDots, "black, dotted: the source cache, "+strings.Join(parts, ", "))
	}
	if markPublish {
		legend("#999", "", fmt.Sprintf("grey, vertical: shoal publish's default chunking (%s average)", FormatSize(publishAvg)))
	}
	fmt.Fprint(bw, "</svg>\n")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing SVG: %w", err)
	}
	return nil
}

// chart.NiceCeil rounds v up to 1, 2 or 5 times a power of ten, so the axis has
// round ticks.
