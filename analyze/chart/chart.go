// Package chart holds what the SVG charts of `shoal analyze dedup` and `shoal analyze
// logs` share, so the two reports look alike: panel geometry, colours, axis steps and
// escaping.
package chart

import (
	"fmt"
	"html"
	"math"
)

// Plot geometry, in SVG user units.
const (
	PanelW, PanelH = 420.0, 300.0
	MarginL        = 70.0
	MarginT        = 50.0
	Gap            = 90.0
	LegendH        = 22.0
)

// Palette colours the series, in order.
var Palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"}

// NiceCeil rounds v up to 1, 2 or 5 times a power of ten, for an axis's top.
func NiceCeil(v float64) float64 {
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

// Esc escapes text for SVG.
func Esc(s string) string { return html.EscapeString(s) }

// TrimFloat prints f in its shortest form.
func TrimFloat(f float64) string { return fmt.Sprintf("%g", f) }
