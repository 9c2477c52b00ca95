package daemon

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
)

// Metrics counts what the daemon did, by source, so users can see where their bytes
// came from and tests can prove what crossed the wire.
type Metrics struct {
	mu       sync.Mutex
	bytes    map[string]int64 // bytes fetched, by source
	requests map[string]int64 // requests answered, by route and status class
}

// NewMetrics returns zeroed counters.
func NewMetrics() *Metrics {
	return &Metrics{bytes: make(map[string]int64), requests: make(map[string]int64)}
}

// Add records n bytes fetched from source.
func (m *Metrics) Add(source string, n int64) {
	m.mu.Lock()
	m.bytes[source] += n
	m.mu.Unlock()
}

// Bytes returns the bytes fetched from source so far.
func (m *Metrics) Bytes(source string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bytes[source]
}

func (m *Metrics) request(route string, status int) {
	m.mu.Lock()
	m.requests[fmt.Sprintf("%s\x00%d", route, status)]++
	m.mu.Unlock()
}

// WriteTo writes the counters in Prometheus' text format.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	p := func(format string, a ...any) {
		k, _ := fmt.Fprintf(w, format, a...)
		n += int64(k)
	}
	p("# HELP shoal_fetched_bytes_total Bytes fetched for NARs, by source (stored/compressed size).\n# TYPE shoal_fetched_bytes_total counter\n")
	for _, k := range sortedKeys(m.bytes) {
		p("shoal_fetched_bytes_total{source=%q} %d\n", k, m.bytes[k])
	}
	p("# HELP shoal_requests_total HTTP requests answered, by route and status.\n# TYPE shoal_requests_total counter\n")
	for _, k := range sortedKeys(m.requests) {
		var route string
		var status int
		for i := range len(k) {
			if k[i] == 0 {
				route = k[:i]
				fmt.Sscanf(k[i+1:], "%d", &status)
				break
			}
		}
		p("shoal_requests_total{route=%q,status=\"%d\"} %d\n", route, status, m.requests[k])
	}
	return n, nil
}

func (m *Metrics) serveHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	_, _ = m.WriteTo(w)
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
