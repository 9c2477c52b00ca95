package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/shoal-nix/shoal/internal/buildinfo"
	"github.com/shoal-nix/shoal/localcache"
)

// CacheFile is the name of the cache file in the state directory.
const CacheFile = "cache.db"

// gauges reads the cache's size for /metrics.
func (d *Daemon) gauges() []Gauge {
	u, err := d.cache.Usage()
	if err != nil {
		d.log.Warn("reading cache usage for metrics", "err", err)
		return nil
	}
	s, err := d.cache.Stats()
	if err != nil {
		d.log.Warn("reading cache stats for metrics", "err", err)
		return nil
	}
	unusable := int64(0)
	if problem, _ := d.storeHealth.get(); problem != "" {
		unusable = 1
	}
	gs := []Gauge{
		{"shoal_store_unusable", "1 while the --store did not answer as a chunk store at its last check (NARs then come whole from the upstream).", unusable},
		{"shoal_cache_file_bytes", "Size of the cache file on disk.", u.FileBytes},
		{"shoal_cache_used_bytes", "Bytes of the cache file holding data; the rest is free pages reused before the file grows.", u.UsedBytes},
		{"shoal_cache_budget_bytes", "The --cache-size budget (0: unbounded).", u.Budget},
		{"shoal_cache_chunks", "Chunks in the local cache.", int64(s.Chunks)},
		{"shoal_cache_chunk_bytes", "Stored bytes of the chunks in the local cache.", s.ChunkBytes},
		{"shoal_cache_evicted_chunks_total", "Chunks evicted to stay within the budget since the daemon started.", u.Evictions},
		{"shoal_cache_evicted_bytes_total", "Stored bytes evicted since the daemon started.", u.EvictedBytes},
		{"shoal_nars_in_flight", "NARs being served, whose chunks eviction leaves alone.", int64(d.cache.ActiveLeases())},
		{"shoal_nar_responses_running", "NAR requests being answered (bounded by MaxNARResponses).", int64(d.narSlots.running())},
		{"shoal_nar_responses_waiting", "NAR requests waiting for one of the running ones to end.", int64(d.narSlots.queued())},
	}
	if d.peers != nil {
		gs = append(gs, d.peerGauges()...)
	}
	return gs
}

// Status is what `shoal status` shows, from a running daemon or from the cache file.
type Status struct {
	// Daemon is true when a running daemon answered; the counters below the cache
	// fields then cover its lifetime. Without it only the cache file is described.
	Daemon bool `json:"daemon"`
	// StateDir is the running daemon's state directory, so a command given another
	// one knows it is not the daemon's.
	StateDir string `json:"state_dir,omitempty"`
	// Store is the daemon's --store; StoreProblem says why it is not being used
	// (empty when it is fine or not yet checked).
	Store        string `json:"store,omitempty"`
	StoreProblem string `json:"store_problem,omitempty"`
	// Version is the running daemon's build.
	Version string `json:"version,omitempty"`

	FileBytes   int64 `json:"file_bytes"`
	UsedBytes   int64 `json:"used_bytes"`
	BudgetBytes int64 `json:"budget_bytes"`
	// BudgetNote says where BudgetBytes came from when no daemon answered.
	BudgetNote   string `json:"budget_note,omitempty"`
	OverBudget   bool   `json:"over_budget"`
	Chunks       int    `json:"chunks"`
	ChunkBytes   int64  `json:"chunk_bytes"`
	Manifests    int    `json:"manifests"`
	NarInfos     int    `json:"narinfos"`
	Evictions    int64  `json:"evicted_chunks"`
	EvictedBytes int64  `json:"evicted_bytes"`
	PinnedBytes  int64  `json:"pinned_bytes"`
	Pins         []Pin  `json:"pins"`

	NARsInFlight   int              `json:"nars_in_flight"`
	NARsWaiting    int              `json:"nars_waiting"`
	FetchedBytes   map[string]int64 `json:"fetched_bytes,omitempty"`
	FetchedObjects map[string]int64 `json:"fetched_objects,omitempty"`
	NarInfoHits    int64            `json:"narinfo_cache_hits"`
	NarInfoMisses  int64            `json:"narinfo_cache_misses"`
	VerifyFailures int64            `json:"nar_verify_failures"`
	// Savings are the bytes shoal saved against whole NARs since the daemon started.
	Savings Savings `json:"savings"`
	// Peers are the IDs of the connected peers not being shunned (with --lan or --dht).
	Peers []string `json:"peers"`
}

// Pin is one pinned store path in Status.
type Pin struct {
	StorePath string `json:"store_path"`
	Origin    string `json:"origin,omitempty"`
	NarKey    string `json:"nar_key,omitempty"`
}

// CacheStatus describes a cache file; the daemon adds its counters to it.
func CacheStatus(ctx context.Context, c *localcache.Cache) (Status, error) {
	var st Status
	u, err := c.Usage()
	if err != nil {
		return st, err
	}
	s, err := c.Stats()
	if err != nil {
		return st, err
	}
	pins, err := c.Pins()
	if err != nil {
		return st, err
	}
	pinned, err := c.PinnedBytes(ctx)
	if err != nil {
		return st, err
	}
	st = Status{
		FileBytes: u.FileBytes, UsedBytes: u.UsedBytes, BudgetBytes: u.Budget, OverBudget: u.OverBudget,
		Chunks: s.Chunks, ChunkBytes: s.ChunkBytes, Manifests: s.Manifests, NarInfos: s.NarInfos,
		Evictions: u.Evictions, EvictedBytes: u.EvictedBytes, PinnedBytes: pinned,
		NARsInFlight: c.ActiveLeases(), Pins: []Pin{}, Peers: []string{},
	}
	for _, p := range pins {
		st.Pins = append(st.Pins, Pin{StorePath: p.StorePath, Origin: p.Origin, NarKey: p.NarKey})
	}
	return st, nil
}

// Status describes the cache and what the daemon did since it started.
func (d *Daemon) Status(ctx context.Context) (Status, error) {
	st, err := CacheStatus(ctx, d.cache)
	if err != nil {
		return st, err
	}
	st.Daemon = true
	st.StateDir = d.cfg.StateDir
	st.Store = d.cfg.StoreURL
	st.StoreProblem, _ = d.storeHealth.get()
	st.Version = buildinfo.Read().String()
	st.NARsWaiting = d.narSlots.queued()
	bytes, fetches, events := d.metrics.Snapshot()
	st.FetchedBytes, st.FetchedObjects = bytes, fetches
	st.NarInfoHits, st.NarInfoMisses = events[eventNarInfoCacheHit], events[eventNarInfoCacheMiss]
	st.VerifyFailures = events[eventNarVerifyFailure]
	st.Savings = d.metrics.Savings()
	if d.peers != nil {
		for _, id := range d.peers.Peers() {
			st.Peers = append(st.Peers, id.String())
		}
		sort.Strings(st.Peers)
	}
	return st, nil
}

// Closure lists the store paths in the closure of path, as Nix knows it
// (`nix-store --query --requisites`).
func Closure(ctx context.Context, path string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "nix-store", "--query", "--requisites", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("listing the closure of %s: %w: %s", path, err, strings.TrimSpace(stderr.String()))
	}
	var paths []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			paths = append(paths, line)
		}
	}
	return paths, nil
}

// pinLoop keeps the closures of Config.PinClosureOf pinned, replacing each one's pins
// when it changes (a new system generation).
func (d *Daemon) pinLoop(ctx context.Context) {
	if len(d.cfg.PinClosureOf) == 0 {
		return
	}
	t := time.NewTicker(d.cfg.PinRefresh)
	defer t.Stop()
	for {
		for _, root := range d.cfg.PinClosureOf {
			paths, err := Closure(ctx, root)
			if err != nil {
				d.log.Warn("pinning closure", "root", root, "err", err)
				continue
			}
			if err := d.cache.ReplacePins("closure-of:"+root, paths); err != nil {
				d.log.Warn("pinning closure", "root", root, "err", err)
				continue
			}
			d.log.Info("closure pinned", "root", root, "paths", len(paths))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// The admin API lets `shoal status/pin/unpin/gc` work while the daemon holds the
// cache file (bbolt allows one process). It answers loopback clients only: the daemon
// listens on loopback for Nix, but a misconfigured --listen must not let other hosts
// unpin or evict.
const adminPrefix = "/shoal/"

// PathsRequest is the body of /shoal/pin and /shoal/unpin.
type PathsRequest struct {
	Paths []string `json:"paths"`
}

// GCRequest is the body of /shoal/gc.
type GCRequest struct {
	// ToBytes is the size to evict down to.
	ToBytes int64 `json:"to_bytes"`
}

// CountReply answers /shoal/pin and /shoal/unpin.
type CountReply struct {
	Count int `json:"count"`
}

func (d *Daemon) serveAdmin(w http.ResponseWriter, r *http.Request) {
	began := time.Now()
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	defer func() { d.metrics.request("admin", rec.status, time.Since(began)) }()
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		http.Error(rec, "the admin API answers loopback clients only", http.StatusForbidden)
		return
	}
	reply := func(v any, err error) {
		if err != nil {
			http.Error(rec, err.Error(), http.StatusBadRequest)
			return
		}
		rec.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rec).Encode(v)
	}
	route := strings.TrimPrefix(r.URL.Path, adminPrefix)
	wantMethod := http.MethodPost
	if route == "status" {
		wantMethod = http.MethodGet
	}
	if r.Method != wantMethod {
		rec.Header().Set("Allow", wantMethod)
		http.Error(rec, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	// A web page can make a browser POST to loopback, but not with a JSON content
	// type without a CORS preflight, which this API never grants.
	if wantMethod == http.MethodPost && r.Header.Get("Content-Type") != "application/json" {
		http.Error(rec, "admin requests must be application/json", http.StatusUnsupportedMediaType)
		return
	}
	// Changing the cache is for whoever can read the token file: root and the
	// daemon's user, not every local user.
	if wantMethod == http.MethodPost && !d.adminAuthorized(r) {
		http.Error(rec, "this admin call needs the token in the daemon's state directory ("+AdminTokenFile+"): run it as root or as the daemon's user", http.StatusForbidden)
		return
	}
	ctx := r.Context()
	switch route {
	case "status":
		reply(d.Status(ctx))
	case "pin", "unpin":
		var req PathsRequest
		if err := json.NewDecoder(http.MaxBytesReader(rec, r.Body, 64<<20)).Decode(&req); err != nil {
			reply(nil, fmt.Errorf("reading request: %w", err))
			return
		}
		if route == "pin" {
			err := d.cache.Pin("", req.Paths)
			reply(CountReply{len(req.Paths)}, err)
			return
		}
		n, err := d.cache.Unpin(req.Paths)
		reply(CountReply{n}, err)
	case "gc":
		var req GCRequest
		if err := json.NewDecoder(http.MaxBytesReader(rec, r.Body, 1<<20)).Decode(&req); err != nil {
			reply(nil, fmt.Errorf("reading request: %w", err))
			return
		}
		if req.ToBytes < 0 {
			reply(nil, errors.New("to_bytes must not be negative"))
			return
		}
		reply(d.cache.Evict(ctx, req.ToBytes))
	case "seed":
		d.serveSeed(rec, r, reply)
	default:
		http.NotFound(rec, r)
	}
}
