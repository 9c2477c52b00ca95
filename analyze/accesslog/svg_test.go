package accesslog

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/analyze/chart"
	"github.com/shoal-nix/shoal/analyze/chart/charttest"
)

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
	els := charttest.Parse(t, buf.Bytes())
	var lines []charttest.Element
	for _, e := range els {
		if e.Name == "polyline" && e.Attrs["stroke-width"] == "1.5" {
			lines = append(lines, e)
		}
		if e.Name == "text" && e.Attrs["text-anchor"] == "end" && e.Num(t, "x") < chart.MarginL {
			if v, err := strconv.ParseFloat(strings.TrimSpace(e.Text), 64); err == nil && v != float64(int(v)) {
				t.Errorf("tick %q on the requests axis is not a whole number", e.Text)
			}
		}
	}
	if len(lines) != 2 || lines[1].Attrs["stroke-dasharray"] == "" {
		t.Errorf("the second of two identical lines is drawn solid over the first: %+v", lines)
	}
	if !strings.Contains(buf.String(), "the same line as 30d") {
		t.Error("the legend does not say that 90d's line is 30d's")
	}
}
