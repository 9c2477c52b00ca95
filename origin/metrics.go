package origin

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/shoal-nix/shoal/internal/promtext"
)

// latencyBuckets are the upper bounds, in seconds, of the request latency histograms:
// a miss answers in a millisecond, a NAR from hot chunks in tens of milliseconds, a
// large first request in seconds.
var latencyBuckets = []float64{0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10, 60, 300}

type routeStatus struct {
	route  string
	status int
}

// Metrics counts what the server did, for Prometheus and for tests that must prove
// what happened (how many NARs were verified, not how long it took).
type Metrics struct {
	mu            sync.Mutex
	requests      map[routeStatus]int64
	sent          map[string]int64 // body bytes sent, by route
	latency       *promtext.Histograms
	verifications int64 // NARs assembled and checked against their narinfo
	verifyFails   int64 // of those, the ones that did not match or could not be read
	chunkHits     int64
	chunkMisses   int64
	gauges        func() []gauge
}

type gauge struct {
	name, help string
	value      int64
}

// NewMetrics returns zeroed counters.
func NewMetrics() *Metrics {
	return &Metrics{requests: map[routeStatus]int64{}, sent: map[string]int64{}, latency: promtext.NewHistograms(latencyBuckets...)}
}

func (m *Metrics) request(route string, status int, sent int64, took time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[routeStatus{route, status}]++
	m.sent[route] += sent
	m.latency.Observe(route, took.Seconds())
}

func (m *Metrics) verified(ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.verifications++
	if !ok {
		m.verifyFails++
	}
}

// untrusted counts a narinfo refused for its signature as a verify failure.
func (m *Metrics) untrusted() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.verifyFails++
}

func (m *Metrics) chunkLookup(hit bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if hit {
		m.chunkHits++
	} else {
		m.chunkMisses++
	}
}

// Verifications returns how many NAR verifications ran and how many NARs were refused
// (a failed verification or an untrusted narinfo). Concurrent
// first requests for one NAR share one verification.
func (m *Metrics) Verifications() (total, failed int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.verifications, m.verifyFails
}

// Requests returns the requests answered on route with status.
func (m *Metrics) Requests(route string, status int) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.requests[routeStatus{route, status}]
}

// WriteTo writes the counters in Prometheus' text format.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	m.mu.Lock()
	gaugeFn := m.gauges
	m.mu.Unlock()
	var gauges []gauge
	if gaugeFn != nil {
		gauges = gaugeFn()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	var werr error
	p := func(format string, a ...any) {
		k, err := fmt.Fprintf(w, format, a...)
		n += int64(k)
		werr = cmp.Or(werr, err)
	}
	p("# HELP shoal_serve_requests_total HTTP requests answered, by route (NAR compression) and status.\n# TYPE shoal_serve_requests_total counter\n")
	reqs := slices.SortedFunc(maps.Keys(m.requests), func(a, b routeStatus) int {
		return cmp.Or(cmp.Compare(a.route, b.route), cmp.Compare(a.status, b.status))
	})
	for _, k := range reqs {
		p("shoal_serve_requests_total{route=%q,status=\"%d\"} %d\n", k.route, k.status, m.requests[k])
	}
	p("# HELP shoal_serve_sent_bytes_total Response body bytes sent, by route.\n# TYPE shoal_serve_sent_bytes_total counter\n")
	for _, r := range slices.Sorted(maps.Keys(m.sent)) {
		p("shoal_serve_sent_bytes_total{route=%q} %d\n", r, m.sent[r])
	}
	p("# HELP shoal_serve_nar_verifications_total NARs assembled from the store and checked against their signed narinfo before serving.\n# TYPE shoal_serve_nar_verifications_total counter\n")
	p("shoal_serve_nar_verifications_total %d\n", m.verifications)
	p("# HELP shoal_serve_nar_verify_failures_total NARs refused: narinfo not signed by a trusted key, a chunk missing or corrupt, or NarHash/NarSize mismatch.\n# TYPE shoal_serve_nar_verify_failures_total counter\n")
	p("shoal_serve_nar_verify_failures_total %d\n", m.verifyFails)
	p("# HELP shoal_serve_chunk_cache_total Chunk lookups in the in-memory cache of hot chunks.\n# TYPE shoal_serve_chunk_cache_total counter\n")
	p("shoal_serve_chunk_cache_total{result=\"hit\"} %d\n", m.chunkHits)
	p("shoal_serve_chunk_cache_total{result=\"miss\"} %d\n", m.chunkMisses)
	for _, g := range gauges {
		p("# HELP %s %s\n# TYPE %s gauge\n%s %d\n", g.name, g.help, g.name, g.name, g.value)
	}
	m.latency.Write(p, "shoal_serve_request_duration_seconds", "Time to answer a request, by route, until the last byte.")
	return n, werr
}
