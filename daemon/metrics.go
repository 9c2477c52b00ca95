package daemon

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/internal/buildinfo"
	"github.com/shoal-nix/shoal/internal/promtext"
)

// latencyBuckets are the upper bounds, in seconds, of the request latency
// histograms: narinfo answers from the local cache take well under a
// millisecond, NARs assembled from remote chunks take seconds.
var latencyBuckets = []float64{0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10, 60}

// Gauge is one value read when metrics are scraped.
type Gauge struct {
	Name, Help string
	Value      int64
}

// Metrics counts what the daemon did, by source, so users can see where their bytes
// came from and tests can prove what crossed the wire.
type Metrics struct {
	mu       sync.Mutex
	bytes    map[string]int64      // bytes fetched, by source
	fetches  map[string]int64      // objects fetched, by source
	requests map[routeStatus]int64 // requests answered, by route and status
	latency  *promtext.Histograms
	events   map[string]int64 // named counters: narinfo hits, verify failures
	savings  Savings
	gauges   func() []Gauge
}

// Savings is what shoal saved against downloading whole NARs, counted from the
// assembler's choice for each NAR that had a manifest (NARs without one come whole
// and save nothing). Saved bytes are the whole NAR's size less what its missing
// chunks cost; a NAR whose chunks then fail and come whole after all costs more than
// was counted here, which shoal_fetched_bytes_total shows.
type Savings struct {
	NARsFromChunks int64 `json:"nars_from_chunks"`
	NARsWhole      int64 `json:"nars_whole"`
	// WholeBytes is what those NARs cost as whole NAR files from the upstream.
	WholeBytes int64 `json:"whole_nar_bytes"`
	// SavedBytes is WholeBytes less what shoal chose to download for them.
	SavedBytes int64 `json:"saved_bytes"`
	// DeltaSavedBytes is the part of SavedBytes that deltas saved over full chunks.
	DeltaSavedBytes int64 `json:"delta_saved_bytes"`
}

// Priced implements fetch.Counters.
func (m *Metrics) Priced(p fetch.Pricing) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p.Whole {
		m.savings.NARsWhole++
		m.savings.WholeBytes += p.WholeBytes
		return
	}
	m.savings.NARsFromChunks++
	if p.WholeBytes <= 0 {
		return // no size to save against
	}
	m.savings.WholeBytes += p.WholeBytes
	m.savings.SavedBytes += p.WholeBytes - p.DownloadBytes
	m.savings.DeltaSavedBytes += p.DeltaSavedBytes
}

// Savings returns what shoal saved so far.
func (m *Metrics) Savings() Savings {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.savings
}

// NewMetrics returns zeroed counters.
func NewMetrics() *Metrics {
	return &Metrics{
		bytes:    make(map[string]int64),
		fetches:  make(map[string]int64),
		requests: make(map[routeStatus]int64),
		latency:  promtext.NewHistograms(latencyBuckets...),
		events:   make(map[string]int64),
	}
}

// Add records n bytes fetched from source. The fetcher calls it once per object it
// fetched: a chunk from a chunk source, a whole NAR from the upstream.
func (m *Metrics) Add(source string, n int64) {
	m.mu.Lock()
	m.bytes[source] += n
	m.fetches[source]++
	m.mu.Unlock()
}

// Bytes returns the bytes fetched from source so far.
func (m *Metrics) Bytes(source string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bytes[source]
}

// Event counts one occurrence of a named event (see the event* constants).
func (m *Metrics) Event(name string) {
	m.mu.Lock()
	m.events[name]++
	m.mu.Unlock()
}

// Events returns how often the named event happened.
func (m *Metrics) Events(name string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.events[name]
}

// Event names.
const (
	eventNarInfoCacheHit  = "narinfo_cache_hit"  // answered from the local narinfo cache
	eventNarInfoCacheMiss = "narinfo_cache_miss" // had to ask the store or the upstreams
	eventNarVerifyFailure = "nar_verify_failure" // a NAR or a local chunk failed its check
)

// setGauges installs the function that reads the gauges at scrape time.
func (m *Metrics) setGauges(f func() []Gauge) {
	m.mu.Lock()
	m.gauges = f
	m.mu.Unlock()
}

func (m *Metrics) request(route string, status int, took time.Duration) {
	m.mu.Lock()
	m.requests[routeStatus{route, status}]++
	m.latency.Observe(route, took.Seconds())
	m.mu.Unlock()
}

// Snapshot returns the counters as plain maps, for `shoal status`.
func (m *Metrics) Snapshot() (bytes, fetches, events map[string]int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	clone := func(src map[string]int64) map[string]int64 {
		out := make(map[string]int64, len(src))
		for k, v := range src {
			out[k] = v
		}
		return out
	}
	return clone(m.bytes), clone(m.fetches), clone(m.events)
}

// WriteTo writes the counters in Prometheus' text format.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	m.mu.Lock()
	gaugeFn := m.gauges
	m.mu.Unlock()
	var gauges []Gauge
	if gaugeFn != nil {
		gauges = gaugeFn() // outside the lock: it reads the cache
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	p := func(format string, a ...any) {
		k, _ := fmt.Fprintf(w, format, a...)
		n += int64(k)
	}
	bi := buildinfo.Read()
	p("# HELP shoal_build_info The running daemon's build (always 1).\n# TYPE shoal_build_info gauge\n")
	p("shoal_build_info{version=%q,revision=%q,goversion=%q} 1\n", bi.Version, bi.Revision, bi.GoVersion)
	p("# HELP shoal_fetched_bytes_total Bytes fetched for NARs, by source (stored/compressed size).\n# TYPE shoal_fetched_bytes_total counter\n")
	for _, k := range sortedKeys(m.bytes) {
		p("shoal_fetched_bytes_total{source=%q} %d\n", k, m.bytes[k])
	}
	p("# HELP shoal_fetched_objects_total Objects fetched, by source: chunks from chunk sources, whole NARs from the upstream, manifests from the store.\n# TYPE shoal_fetched_objects_total counter\n")
	for _, k := range sortedKeys(m.fetches) {
		p("shoal_fetched_objects_total{source=%q} %d\n", k, m.fetches[k])
	}
	p("# HELP shoal_nars_priced_total NARs with a manifest, by what was chosen: the chunks missing locally or the whole NAR from the upstream.\n# TYPE shoal_nars_priced_total counter\n")
	p("shoal_nars_priced_total{choice=\"chunks\"} %d\n", m.savings.NARsFromChunks)
	p("shoal_nars_priced_total{choice=\"whole\"} %d\n", m.savings.NARsWhole)
	p("# HELP shoal_whole_nar_bytes_total What the NARs with a manifest cost as whole NAR files from the upstream: the bytes Nix alone would have downloaded.\n# TYPE shoal_whole_nar_bytes_total counter\n")
	p("shoal_whole_nar_bytes_total %d\n", m.savings.WholeBytes)
	p("# HELP shoal_saved_bytes_total Bytes not downloaded against whole NARs, by what saved them: chunks already local (cache, /nix/store) or deltas instead of full chunks.\n# TYPE shoal_saved_bytes_total counter\n")
	p("shoal_saved_bytes_total{by=\"delta\"} %d\n", m.savings.DeltaSavedBytes)
	p("shoal_saved_bytes_total{by=\"local\"} %d\n", m.savings.SavedBytes-m.savings.DeltaSavedBytes)
	p("# HELP shoal_narinfo_cache_total narinfo lookups answered from the local cache (hit) or from the store and upstreams (miss).\n# TYPE shoal_narinfo_cache_total counter\n")
	p("shoal_narinfo_cache_total{result=\"hit\"} %d\n", m.events[eventNarInfoCacheHit])
	p("shoal_narinfo_cache_total{result=\"miss\"} %d\n", m.events[eventNarInfoCacheMiss])
	p("# HELP shoal_nar_verify_failures_total NARs that did not match their narinfo and local chunks that failed their ID check.\n# TYPE shoal_nar_verify_failures_total counter\n")
	p("shoal_nar_verify_failures_total %d\n", m.events[eventNarVerifyFailure])
	p("# HELP shoal_delta_failures_total Delta objects that could not be used (missing, undecodable, or rebuilding other bytes); the full chunk was fetched instead.\n# TYPE shoal_delta_failures_total counter\n")
	p("shoal_delta_failures_total %d\n", m.events[fetch.EventDeltaFailed])
	for _, g := range gauges {
		p("# HELP %s %s\n# TYPE %s gauge\n%s %d\n", g.Name, g.Help, g.Name, g.Name, g.Value)
	}
	p("# HELP shoal_requests_total HTTP requests answered, by route and status.\n# TYPE shoal_requests_total counter\n")
	reqs := slices.SortedFunc(maps.Keys(m.requests), func(a, b routeStatus) int {
		return cmp.Or(cmp.Compare(a.route, b.route), cmp.Compare(a.status, b.status))
	})
	for _, k := range reqs {
		p("shoal_requests_total{route=%q,status=\"%d\"} %d\n", k.route, k.status, m.requests[k])
	}
	m.latency.Write(p, "shoal_request_duration_seconds", "Time to answer a request, by route (for NARs, until the last byte).")
	return n, nil
}

func (m *Metrics) serveHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	_, _ = m.WriteTo(w)
}

// routeStatus keys the request counter.
type routeStatus struct {
	route  string
	status int
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
