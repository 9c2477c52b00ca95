package dedup

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/xml"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal/chunk"
)

// sweepResult runs three sizes and both strategies over two small NARs.
func sweepResult(t *testing.T) *Result {
	t.Helper()
	files := map[string]string{"a": strings.Repeat("alpha ", 3000), "b": strings.Repeat("beta <&> ", 2000)}
	v1 := narOf(t, files, "a", "b")
	files["b"] += "changed"
	v2 := narOf(t, files, "a", "b")
	var cfgs []Config
	for _, s := range []Strategy{WholeNAR, FileBoundaries} {
		for _, avg := range []int{256, 512, 1024} {
			cfgs = append(cfgs, Config{s, chunk.Params{Min: avg / 4, Avg: avg, Max: avg * 4}})
		}
	}
	res, err := Run(context.Background(), []Source{memSource("v1", v1, 900), memSource("v2", v2, 950)}, Options{
		Configs: cfgs, Levels: []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault},
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestSummaryCSV(t *testing.T) {
	res := sweepResult(t)
	var buf bytes.Buffer
	if err := res.WriteSummaryCSV(&buf); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1+6*2 {
		t.Fatalf("%d rows, want a header and one per configuration and level (13)", len(rows))
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, row := range rows[1:] {
		num := func(name string) uint64 {
			v, err := strconv.ParseUint(row[col[name]], 10, 64)
			if err != nil {
				t.Fatalf("column %s: %v", name, err)
			}
			return v
		}
		if num("stored_bytes")+num("manifest_bytes") != num("total_bytes") {
			t.Errorf("%v: stored + manifests != total", row)
		}
		if num("unique_bytes") > num("nar_bytes") || num("source_bytes") != 1850 || num("source_upgrade_bytes") != 950 {
			t.Errorf("%v: inconsistent byte counts", row)
		}
	}

	buf.Reset()
	if err := res.WriteNARsCSV(&buf); err != nil {
		t.Fatal(err)
	}
	if rows, err := csv.NewReader(&buf).ReadAll(); err != nil || len(rows) != 1+6*2*2 {
		t.Errorf("per-NAR CSV: %d rows, %v; want 25", len(rows), err)
	}
	buf.Reset()
	if err := res.WriteSizesCSV(&buf); err != nil {
		t.Fatal(err)
	}
	rows, err = csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	// The buckets of each configuration add up to its distinct chunks.
	counts := map[string]uint64{}
	for _, row := range rows[1:] {
		n, _ := strconv.ParseUint(row[6], 10, 64)
		counts[strings.Join(row[:4], "/")] += n
	}
	for _, c := range res.Configs {
		key := strings.Join([]string{string(c.Strategy), itoa(c.Params.Min), itoa(c.Params.Avg), itoa(c.Params.Max)}, "/")
		if counts[key] != c.UniqueChunks {
			t.Errorf("%s: histogram holds %d chunks, want %d", key, counts[key], c.UniqueChunks)
		}
	}
}

func TestHistogram(t *testing.T) {
	c := ConfigResult{Sizes: []uint32{1, 3, 4, 7, 8, 1000}}
	want := []Bucket{{1, 2, 1, 1}, {2, 4, 1, 3}, {4, 8, 2, 11}, {8, 16, 1, 8}, {512, 1024, 1, 1000}}
	got := c.Histogram()
	if len(got) != len(want) {
		t.Fatalf("%v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("bucket %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestSVGWellFormed(t *testing.T) {
	res := sweepResult(t)
	var buf bytes.Buffer
	if err := res.WriteSVG(&buf, 1); err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(buf.Bytes()))
	var root string
	polylines, circles := 0, 0
	for {
		tk, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v", err)
		}
		if se, ok := tk.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Space + " " + se.Name.Local
			}
			switch se.Name.Local {
			case "polyline":
				polylines++
			case "circle":
				circles++
			}
		}
	}
	if root != "http://www.w3.org/2000/svg svg" {
		t.Errorf("root element %q, want svg in the SVG namespace", root)
	}
	// Two panels, one line per strategy, one point per configuration.
	if polylines != 2*2 || circles != 2*6 {
		t.Errorf("%d lines and %d points, want 4 and 12", polylines, circles)
	}
	if !strings.Contains(buf.String(), "source cache") {
		t.Error("no reference line for the source cache")
	}
}

func TestTable(t *testing.T) {
	res := sweepResult(t)
	var buf bytes.Buffer
	if err := res.WriteTable(&buf, 0); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2+6 {
		t.Fatalf("%d lines, want a title, a header and 6 rows:\n%s", len(lines), buf.String())
	}
	if !strings.Contains(lines[1], "fastest") || !strings.Contains(lines[1], "default") {
		t.Errorf("header %q lacks the levels", lines[1])
	}
}
