// Package promtext holds what the daemon's and the reassembly server's /metrics pages
// share in the Prometheus text format: latency histograms by route. The pages write
// the format themselves rather than pull in a client library, so the shared part is
// just this.
package promtext

import (
	"fmt"
	"maps"
	"slices"
	"sort"
)

// Histograms are latency histograms keyed by a route label, with fixed upper bounds
// in seconds. Not safe for concurrent use: callers hold their metrics lock.
type Histograms struct {
	bounds []float64
	byKey  map[string]*histogram
}

type histogram struct {
	counts []int64 // per bucket, not cumulative; the last is above every bound
	sum    float64
	n      int64
}

// NewHistograms returns empty histograms with the given ascending upper bounds.
func NewHistograms(bounds ...float64) *Histograms {
	return &Histograms{bounds: bounds, byKey: map[string]*histogram{}}
}

// Observe records v seconds for route.
func (hs *Histograms) Observe(route string, v float64) {
	h := hs.byKey[route]
	if h == nil {
		h = &histogram{counts: make([]int64, len(hs.bounds)+1)}
		hs.byKey[route] = h
	}
	h.counts[sort.SearchFloat64s(hs.bounds, v)]++
	h.sum += v
	h.n++
}

// Write prints the histograms as metric name, HELP text help, one series per route
// in route order, through p (a printf that remembers its first error).
func (hs *Histograms) Write(p func(format string, args ...any), name, help string) {
	p("# HELP %s %s\n# TYPE %s histogram\n", name, help, name)
	for _, route := range slices.Sorted(maps.Keys(hs.byKey)) {
		h := hs.byKey[route]
		var cum int64
		for i, le := range hs.bounds {
			cum += h.counts[i]
			p("%s_bucket{route=%q,le=%q} %d\n", name, route, fmt.Sprintf("%g", le), cum)
		}
		p("%s_bucket{route=%q,le=\"+Inf\"} %d\n", name, route, h.n)
		p("%s_sum{route=%q} %g\n", name, route, h.sum)
		p("%s_count{route=%q} %d\n", name, route, h.n)
	}
}
