package accesslog

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/shoal-nix/shoal/analyze/chart"
)

// Share is part/all as a fraction, 0 when all is 0.
func share(part, all uint64) float64 {
	if all == 0 {
		return 0
	}
	return float64(part) / float64(all)
}

func pct(part, all uint64) string {
	return strconv.FormatFloat(100*share(part, all), 'f', 1, 64) + "%"
}

const minuteLayout = "2006-01-02 15:04"

func (r *LogReport) span() time.Duration { return r.Last.Sub(r.First) }

// perMinute averages n over the minutes the logs span, so a peak can be
// compared with the usual load.
func (r *LogReport) perMinute(n uint64) float64 {
	if r.Lines == 0 {
		return 0
	}
	return float64(n) / float64(r.SpanMinutes)
}

// AgeSource says where NAR ages come from, for the table and the docs.
func (r *LogReport) AgeSource() string {
	if r.AgeFromCache {
		return "age = request time - the NAR file's upload (last-modified) time in the main cache"
	}
	return "age = request time - the NAR's first appearance in these logs: a LOWER BOUND (give --cache for real ages)"
}

// WriteTable prints the totals, one line per scenario, the hottest retired
// NARs of each and the first malformed lines.
func (r *LogReport) WriteTable(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "%d log files, %d requests", r.Files, r.Lines)
	if r.Lines > 0 {
		fmt.Fprintf(bw, " from %s to %s UTC (%.1f days)", r.First.Format(minuteLayout), r.Last.Format(minuteLayout), r.span().Hours()/24)
	}
	fmt.Fprintf(bw, ", %d malformed lines\n", r.Malformed)
	if r.Malformed > r.Lines {
		fmt.Fprintf(bw, "MOST LINES DID NOT PARSE: are these access logs, and is --format right? (the first malformed lines are quoted at the end)\n")
	}
	fmt.Fprintf(bw, "NAR traffic (GET/HEAD of /nar/ answered 200/206): %d requests, %s GB, %d NARs", r.NAR.Requests, gb(r.NAR.Bytes), r.NARs)
	fmt.Fprintf(bw, "; other /nar/ requests: %d\n", r.NARFailed.Requests)
	fmt.Fprintf(bw, "narinfo requests (stay on the main cache): %d hits, %d misses, %d other; other requests: %d\n",
		r.NarinfoHits.Requests, r.NarinfoMisses.Requests, r.NarinfoOther.Requests, r.Other.Requests)
	if r.AgeFromCache && r.NotInCache.Requests > 0 {
		fmt.Fprintf(bw, "NAR traffic to NARs no longer in the main cache (age unknown, never counted as retired): %d requests, %s GB\n",
			r.NotInCache.Requests, gb(r.NotInCache.Bytes))
	}
	fmt.Fprintf(bw, "%s\n", r.AgeSource())
	fmt.Fprintf(bw, "load on the reassembly service if these NARs were retired; GB = 10^9 bytes; mean and p99 over every minute the logs span; peaks are the busiest clock minute (MB/s averaged over it)\n")
	tw := tabwriter.NewWriter(bw, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "retired\tNARs\trequests\t/all NAR\tGB\t/all NAR\tmean req/min\tp99 req/min\tpeak req/min\tat (UTC)\tpeak MB/s\tat (UTC)\t\n")
	for _, s := range r.Scenarios {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%.2f\t%d\t%d\t%s\t%s\t%s\t\n", s.Name, s.NARs, s.Retired.Requests, pct(s.Retired.Requests, r.NAR.Requests),
			gb(s.Retired.Bytes), pct(s.Retired.Bytes, r.NAR.Bytes), r.perMinute(s.Retired.Requests), s.P99Requests, s.PeakRequests, when(s.PeakRequestsAt),
			strconv.FormatFloat(float64(s.PeakBytes)/60/1e6, 'f', 2, 64), when(s.PeakBytesAt))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range r.Scenarios {
		if len(s.HotByRequests) == 0 {
			continue
		}
		fmt.Fprintf(bw, "\nhottest retired NARs, %s (top %d of %d)", s.Name, len(s.HotByRequests), s.NARs)
		lists := []struct {
			by  string
			hot []HotNAR
		}{{"requests", s.HotByRequests}, {"bytes", s.HotByBytes}}
		if slices.Equal(s.HotByRequests, s.HotByBytes) {
			// NARs of similar size rank alike; one list says it all.
			lists = lists[:1]
			lists[0].by = "requests and by bytes"
		}
		for _, list := range lists {
			fmt.Fprintf(bw, "\n  by %s:\n", list.by)
			tw := tabwriter.NewWriter(bw, 0, 0, 2, ' ', 0)
			fmt.Fprint(tw, "  requests\tGB\tstore path or NAR URL\n")
			for _, h := range list.hot {
				fmt.Fprintf(tw, "  %d\t%s\t%s\n", h.Requests, gb(h.Bytes), h.Name())
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
	}
	if r.Malformed > 0 {
		fmt.Fprintf(bw, "\nmalformed lines (first %d of %d):\n", len(r.Examples), r.Malformed)
		for _, m := range r.Examples {
			fmt.Fprintf(bw, "  %s:%d: %s: %s\n", m.File, m.Line, m.Err, m.Text)
		}
	}
	return bw.Flush()
}

func gb(n uint64) string { return strconv.FormatFloat(float64(n)/1e9, 'f', 1, 64) }

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(minuteLayout)
}

func csvTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format(time.RFC3339)
}

// WriteSummaryCSV writes one row per scenario.
func (r *LogReport) WriteSummaryCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	ageSource := "first_seen"
	if r.AgeFromCache {
		ageSource = "cache"
	}
	_ = cw.Write([]string{"scenario", "older_than_seconds", "age_source", "nar_requests", "nar_bytes", "retired_nars",
		"retired_requests", "retired_bytes", "request_share", "byte_share",
		"peak_requests_per_minute", "peak_requests_at", "peak_bytes_per_minute", "peak_bytes_at", "mean_requests_per_minute", "p99_requests_per_minute"})
	for _, s := range r.Scenarios {
		older := ""
		if !s.Keep {
			older = strconv.FormatInt(int64(s.OlderThan/time.Second), 10)
		}
		_ = cw.Write([]string{s.Name, older, ageSource, utoa(r.NAR.Requests), utoa(r.NAR.Bytes), itoa(s.NARs),
			utoa(s.Retired.Requests), utoa(s.Retired.Bytes),
			strconv.FormatFloat(share(s.Retired.Requests, r.NAR.Requests), 'f', 6, 64),
			strconv.FormatFloat(share(s.Retired.Bytes, r.NAR.Bytes), 'f', 6, 64),
			utoa(s.PeakRequests), csvTime(s.PeakRequestsAt), utoa(s.PeakBytes), csvTime(s.PeakBytesAt),
			strconv.FormatFloat(r.perMinute(s.Retired.Requests), 'f', 3, 64), utoa(s.P99Requests)})
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("writing summary CSV: %w", err)
	}
	return nil
}

// WriteMinutesCSV writes one row per minute with NAR traffic: all of it and
// each scenario's retired part, what a capacity plan needs beyond the peak.
func (r *LogReport) WriteMinutesCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	head := []string{"minute", "nar_requests", "nar_bytes"}
	for _, s := range r.Scenarios {
		head = append(head, s.Name+" requests", s.Name+" bytes")
	}
	_ = cw.Write(head)
	row := make([]string, 0, len(head))
	for _, m := range r.Minutes {
		row = append(row[:0], csvTime(m.At), utoa(m.All.Requests), utoa(m.All.Bytes))
		for _, c := range m.Retired {
			row = append(row, utoa(c.Requests), utoa(c.Bytes))
		}
		_ = cw.Write(row)
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("writing minutes CSV: %w", err)
	}
	return nil
}

// WriteHotCSV writes each scenario's hottest retired NARs, by requests and
// by bytes.
func (r *LogReport) WriteHotCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"scenario", "by", "rank", "nar_url", "store_path", "requests", "bytes"})
	for _, s := range r.Scenarios {
		for _, list := range []struct {
			by  string
			hot []HotNAR
		}{{"requests", s.HotByRequests}, {"bytes", s.HotByBytes}} {
			for i, h := range list.hot {
				_ = cw.Write([]string{s.Name, list.by, itoa(i + 1), h.Key, h.StorePath, utoa(h.Requests), utoa(h.Bytes)})
			}
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("writing hottest CSV: %w", err)
	}
	return nil
}

// maxPlotPoints bounds the time-series polyline: a year of minutes would
// make an SVG no browser wants to draw. Each point is the busiest minute of
// its interval, so the peak survives the thinning.
const maxPlotPoints = 600

// WriteSVG draws two panels: retired NAR requests per minute over time, one
// line per scenario, and the retired share of NAR requests and bytes against
// the cut-off age (when there are cut-off ages).
func (r *LogReport) WriteSVG(w io.Writer) error {
	bw := bufio.NewWriter(w)
	width := 2*chart.PanelW + chart.Gap + chart.MarginL + 30
	height := chart.MarginT + chart.PanelH + 60 + chart.LegendH*float64(len(r.Scenarios)+2)
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	fmt.Fprintf(bw, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	title := fmt.Sprintf("shoal analyze logs: %d NAR requests, %s GB", r.NAR.Requests, gb(r.NAR.Bytes))
	if r.Lines > 0 {
		title += fmt.Sprintf(", %s to %s UTC", r.First.Format(minuteLayout), r.Last.Format(minuteLayout))
	}
	if !r.AgeFromCache {
		title += " (ages: first appearance, a lower bound)"
	}
	fmt.Fprintf(bw, `<text x="%.0f" y="20" font-size="14" font-weight="bold">%s</text>`+"\n", chart.MarginL, chart.Esc(title))

	// Panel 1: requests per minute to the service over time.
	x0, y0 := chart.MarginL, chart.MarginT
	var t0, t1 int64
	if len(r.Minutes) > 0 {
		t0, t1 = r.Minutes[0].At.Unix()/60, r.Minutes[len(r.Minutes)-1].At.Unix()/60
	}
	step := max((t1-t0+1+maxPlotPoints-1)/maxPlotPoints, 1)
	nb := int((t1-t0)/step) + 1
	peaks := make([][]uint64, len(r.Scenarios))
	var top uint64
	for i := range r.Scenarios {
		peaks[i] = make([]uint64, nb)
		for _, m := range r.Minutes {
			b := (m.At.Unix()/60 - t0) / step
			peaks[i][b] = max(peaks[i][b], m.Retired[i].Requests)
			top = max(top, m.Retired[i].Requests)
		}
	}
	// Requests are counts: at least 5 on the axis, so its five ticks are whole.
	ymax := max(chart.NiceCeil(float64(top)), 5)
	xOf := func(b int) float64 {
		if nb == 1 {
			return x0 + chart.PanelW/2
		}
		return x0 + chart.PanelW*float64(b)/float64(nb-1)
	}
	yOf := func(v float64) float64 { return y0 + chart.PanelH - chart.PanelH*v/ymax }
	axes(bw, x0, y0, "retired NAR requests per minute", ymax)
	if len(r.Minutes) > 0 {
		for _, tk := range []int{0, nb - 1} {
			at := time.Unix((t0+int64(tk)*step)*60, 0).UTC()
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", xOf(tk), y0+chart.PanelH+16, at.Format(minuteLayout))
		}
	}
	label := "time (UTC)"
	if step > 1 {
		label = fmt.Sprintf("time (UTC); each point the busiest minute of %d", step)
	}
	fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x0+chart.PanelW/2, y0+chart.PanelH+34, chart.Esc(label))
	// A scenario retiring exactly what an earlier one does draws the same line; it is
	// drawn dashed over it, so both colours show, and the legend says so.
	sameAs := make([]int, len(r.Scenarios))
	for i := range r.Scenarios {
		sameAs[i] = -1
		for j := range i {
			if sameAs[j] < 0 && slices.Equal(peaks[i], peaks[j]) {
				sameAs[i] = j
				break
			}
		}
	}
	for i := range r.Scenarios {
		dash := ""
		if sameAs[i] >= 0 {
			dash = ` stroke-dasharray="6,6"`
		}
		fmt.Fprintf(bw, `<polyline fill="none" stroke="%s" stroke-width="1.5"%s points="`, chart.Palette[i%len(chart.Palette)], dash)
		for b, v := range peaks[i] {
			if b > 0 {
				fmt.Fprint(bw, " ")
			}
			fmt.Fprintf(bw, "%.1f,%.1f", xOf(b), yOf(float64(v)))
		}
		fmt.Fprint(bw, `"/>`+"\n")
	}

	// Panel 2: retired share against the cut-off age.
	x0 = chart.MarginL + chart.PanelW + chart.Gap
	axes(bw, x0, y0, "retired share of NAR traffic (%)", 100)
	var ages []ScenarioResult
	var keep *ScenarioResult
	for i, s := range r.Scenarios {
		if !s.Keep {
			ages = append(ages, s)
		} else {
			keep = &r.Scenarios[i]
		}
	}
	maxDays := 1.0
	for _, s := range ages {
		maxDays = max(maxDays, s.OlderThan.Hours()/24)
	}
	maxDays = chart.NiceCeil(maxDays)
	xAge := func(d time.Duration) float64 { return x0 + chart.PanelW*d.Hours()/24/maxDays }
	yPct := func(f float64) float64 { return y0 + chart.PanelH - chart.PanelH*f }
	for t := 0; t <= 5; t++ {
		d := maxDays * float64(t) / 5
		fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x0+chart.PanelW*float64(t)/5, y0+chart.PanelH+16, chart.TrimFloat(math.Round(d*10)/10))
	}
	fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle">cut-off age (days)</text>`+"\n", x0+chart.PanelW/2, y0+chart.PanelH+34)
	for j, line := range []struct {
		color string
		f     func(ScenarioResult) float64
	}{
		{"#000", func(s ScenarioResult) float64 { return share(s.Retired.Requests, r.NAR.Requests) }},
		{"#888", func(s ScenarioResult) float64 { return share(s.Retired.Bytes, r.NAR.Bytes) }},
	} {
		dash := ""
		if j == 1 {
			dash = ` stroke-dasharray="6,4"`
		}
		fmt.Fprintf(bw, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="`, line.color, dash)
		for k, s := range ages {
			if k > 0 {
				fmt.Fprint(bw, " ")
			}
			fmt.Fprintf(bw, "%.1f,%.1f", xAge(s.OlderThan), yPct(line.f(s)))
		}
		fmt.Fprint(bw, `"/>`+"\n")
		for _, s := range ages {
			fmt.Fprintf(bw, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s: %.1f%%</title></circle>`+"\n",
				xAge(s.OlderThan), yPct(line.f(s)), line.color, chart.Esc(s.Name), 100*line.f(s))
		}
		if keep != nil {
			y := yPct(line.f(*keep))
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#2ca02c"%s/>`+"\n", x0, y, x0+chart.PanelW, y, dash)
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="end" fill="#2ca02c">%s %.1f%%</text>`+"\n", x0+chart.PanelW-4, y-4, chart.Esc(keep.Name), 100*line.f(*keep))
		}
	}

	ly := chart.MarginT + chart.PanelH + 60
	for i, s := range r.Scenarios {
		y := ly + chart.LegendH*float64(i)
		dash, same := "", ""
		if j := sameAs[i]; j >= 0 {
			dash = ` stroke-dasharray="6,6"`
			same = ", the same line as " + r.Scenarios[j].Name
		}
		fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`+"\n", chart.MarginL, y, chart.MarginL+30, y, chart.Palette[i%len(chart.Palette)], dash)
		fmt.Fprintf(bw, `<text x="%.1f" y="%.1f">%s</text>`+"\n", chart.MarginL+38, y+4, chart.Esc(fmt.Sprintf("%s (peak %d/min%s)", s.Name, s.PeakRequests, same)))
	}
	x := chart.MarginL + chart.PanelW + chart.Gap
	for j, l := range []string{"share of requests", "share of bytes"} {
		y := ly + chart.LegendH*float64(j)
		dash := ""
		if j == 1 {
			dash = ` stroke-dasharray="6,4"`
		}
		fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`+"\n", x, y, x+30, y, []string{"#000", "#888"}[j], dash)
		fmt.Fprintf(bw, `<text x="%.1f" y="%.1f">%s</text>`+"\n", x+38, y+4, l)
	}
	fmt.Fprint(bw, "</svg>\n")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing SVG: %w", err)
	}
	return nil
}

// axes draws a panel's frame, title and horizontal grid up to ymax.
func axes(w io.Writer, x0, y0 float64, title string, ymax float64) {
	fmt.Fprintf(w, `<text x="%.1f" y="%.1f" font-weight="bold">%s</text>`+"\n", x0, y0-10, chart.Esc(title))
	fmt.Fprintf(w, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#444"/>`+"\n", x0, y0, chart.PanelW, chart.PanelH)
	for t := 0; t <= 5; t++ {
		v := ymax * float64(t) / 5
		y := y0 + chart.PanelH - chart.PanelH*float64(t)/5
		fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", x0, y, x0+chart.PanelW, y)
		fmt.Fprintf(w, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", x0-5, y+4, chart.TrimFloat(math.Round(v*10)/10))
	}
}

func itoa(n int) string    { return strconv.Itoa(n) }
func utoa(n uint64) string { return strconv.FormatUint(n, 10) }
