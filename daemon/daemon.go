// Package daemon wires shoal's daemon: the local cache, the central store, the upstream
// caches and the HTTP endpoint that nix-daemon substitutes from.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/nixstore"
	"github.com/shoal-nix/shoal/p2p"
	"golang.org/x/sync/singleflight"
)

// Config is everything the daemon needs; the CLI fills it from flags.
type Config struct {
	Listen      string
	StoreURL    string   // optional central chunk store
	Upstreams   []string // plain binary caches, in order
	TrustedKeys []string
	StateDir    string
	// Priority is nix-cache-info's Priority: lower wins, 0 is the highest Nix knows.
	// Every value is served as given (the CLI's default is DefaultPriority), so 0 is
	// not taken to mean "unset".
	Priority int

	// CacheSize bounds the state directory's cache file in bytes (0: no bound); see
	// localcache.Options.Budget.
	CacheSize int64
	// PinClosureOf lists store paths (such as /run/current-system) whose closures stay
	// pinned, refreshed every PinRefresh, so the running system's upgrade base is never
	// evicted.
	PinClosureOf []string
	PinRefresh   time.Duration

	// VerifyWait bounds how long Nix waits for headers while a NAR is checked before the
	// first byte; past it, verified chunks are streamed and the end is held back until
	// the whole NAR matched. Zero takes the default, StreamAtOnce: every NAR not yet
	// verified streams from the start, so that Nix writes the store path while the rest
	// is fetched and checked (an upgrade over a 100 Mbit/s link took 0.44 of plain
	// Nix's time streaming, 0.49 verifying first: docs/upgrades.md). Waiting suits a
	// client that wants ranges or a 404 rather than a broken transfer when a NAR fails.
	VerifyWait time.Duration
	// Narinfo cache lifetimes: a hit, a miss everywhere, a miss because something was
	// unreachable (short, so an outage heals quickly).
	PositiveTTL    time.Duration
	NotFoundTTL    time.Duration
	UnreachableTTL time.Duration
	// LookupTimeout bounds one narinfo lookup across all sources, so a dead upstream
	// can't stall every Nix query.
	LookupTimeout time.Duration

	// StallTimeout cuts a connection whose client takes no bytes of a response for
	// this long (60s; Nix's own stall timeout is 300s), so a reader that stops can't
	// keep a NAR's lease and slot.
	StallTimeout time.Duration
	// MaxNARResponses bounds the NAR responses served at once (32, above Nix's 25
	// connections); MaxNARWaiting the requests queued for one beyond it (256).
	MaxNARResponses int
	MaxNARWaiting   int

	Params     chunk.Params
	Logger     *slog.Logger
	HTTPClient *http.Client

	// LAN sharing (see peers.go): off unless LAN is set.
	LAN             bool
	PeerListen      []string // multiaddrs; empty: TCP and QUIC on port 37516 (TCP only with a fleet key)
	FleetKeyFile    string   // pre-shared key: only daemons holding it connect
	PeerUploadLimit int64    // bytes/s sent to peers (0: no bound)
	Peer            PeerTuning

	// PeerDeltaEncoders bounds the deltas computed for peers at once (0: p2p's
	// default; negative: none served).
	PeerDeltaEncoders int

	// DHT finds and announces NARs beyond the LAN (see peers.go); it starts the peer
	// node even without LAN, then without mDNS.
	DHT            bool
	DHTMode        string   // server (default), client or auto
	BootstrapPeers []string // multiaddrs ending in /p2p/<peer id>
	AnnounceMax    int      // NARs announced, most recently used first (0: p2p's default)

	// SeedStore is the Nix store directory whose valid paths lend their chunks (see
	// seed.go); empty turns seeding off. SeedRelated bounds the other versions of a
	// package indexed when one of its NARs is requested (0: only paths seeded through
	// Seed).
	SeedStore   string
	SeedRelated int
}

// StreamAtOnce is the VerifyWait that waits for no verification before streaming: a
// NAR's chunks go to Nix as they are checked, the end still held back until the whole
// NAR matched. It is the default; zero, the field's unset value, takes it.
const StreamAtOnce time.Duration = -1

// DefaultPriority puts shoal ahead of cache.nixos.org, which says 40.
const DefaultPriority = 30

// Defaults fills zero fields with the documented defaults.
func (c *Config) Defaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:37515"
	}
	if c.VerifyWait == 0 {
		c.VerifyWait = StreamAtOnce
	}
	if c.PositiveTTL == 0 {
		c.PositiveTTL = 24 * time.Hour
	}
	if c.NotFoundTTL == 0 {
		c.NotFoundTTL = time.Hour
	}
	if c.UnreachableTTL == 0 {
		c.UnreachableTTL = 30 * time.Second
	}
	if c.LookupTimeout == 0 {
		c.LookupTimeout = 20 * time.Second
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 60 * time.Second
	}
	if c.MaxNARResponses <= 0 {
		c.MaxNARResponses = 32
	}
	if c.MaxNARWaiting <= 0 {
		c.MaxNARWaiting = 256
	}
	if c.PinRefresh == 0 {
		c.PinRefresh = time.Hour
	}
	if c.Params == (chunk.Params{}) {
		c.Params = chunk.DefaultParams()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Daemon serves Nix. Create it with New, serve with Serve or Handler, then Close.
type Daemon struct {
	cfg         Config
	log         *slog.Logger
	cache       *localcache.Cache
	store       *chunkstore.Store
	storeSource *fetch.StoreSource // nil without a store
	upstreams   []*nixcache.BinaryCache
	keys        *nixcache.Keyring
	codec       *chunk.Codec
	fetcher     *fetch.Fetcher
	metrics     *Metrics
	peers       *p2p.Node
	local       *nixstore.Store
	lookups     singleflight.Group
	checked     *checkedNarInfos
	narInfos    *narInfoWriter
	storeHealth storeHealth
	narSlots    *narLimiter
	// adminToken is what admin calls that change the cache must present.
	adminToken string
	now        func() time.Time
}

// New opens the state directory and checks the configuration; it does not contact any
// store or upstream, so a daemon starts even while the network is down.
func New(cfg Config) (*Daemon, error) {
	cfg.Defaults()
	keys, err := nixcache.ParseKeyring(cfg.TrustedKeys)
	if err != nil {
		return nil, fmt.Errorf("trusted public keys: %w", err)
	}
	if err := cfg.Params.Validate(); err != nil {
		return nil, err
	}
	if cfg.Priority < 0 {
		return nil, fmt.Errorf("priority %d: want 0 (highest) or more", cfg.Priority)
	}
	if cfg.StateDir == "" {
		return nil, errors.New("no state directory: set --state-dir")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	adminToken, err := loadAdminToken(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger, keys: keys, metrics: NewMetrics(), now: time.Now, checked: newCheckedNarInfos(),
		narSlots: newNARLimiter(cfg.MaxNARResponses, cfg.MaxNARWaiting), adminToken: adminToken}
	for _, u := range cfg.Upstreams {
		b, err := blob.Open(u, cfg.HTTPClient)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", u, err)
		}
		d.upstreams = append(d.upstreams, nixcache.NewBinaryCache(b))
	}
	if cfg.StoreURL != "" {
		if d.store, err = chunkstore.Open(cfg.StoreURL, cfg.HTTPClient); err != nil {
			return nil, err
		}
		d.storeSource = &fetch.StoreSource{Store: d.store}
	}
	if len(d.upstreams) == 0 && d.store == nil {
		return nil, errors.New("nothing to serve from: give --store or at least one --upstream")
	}
	if d.store != nil && isLocalStore(cfg.StoreURL) {
		if err := d.checkLocalStore(); err != nil {
			return nil, err
		}
	}
	if d.codec, err = chunk.NewCodec(); err != nil {
		return nil, err
	}
	d.cache, err = openCache(filepath.Join(cfg.StateDir, CacheFile), localcache.Options{Budget: cfg.CacheSize, Logger: d.log}, d.log)
	if err != nil {
		d.codec.Close()
		return nil, fmt.Errorf("opening local cache: %w", err)
	}
	if cfg.LAN || cfg.DHT {
		if err := d.startPeers(); err != nil {
			d.cache.Close()
			d.codec.Close()
			return nil, err
		}
	}
	if err := d.startSeeding(); err != nil {
		d.closeParts()
		return nil, err
	}
	d.fetcher = &fetch.Fetcher{
		Cache:    d.cache,
		Codec:    d.codec,
		Deltas:   chunk.NewDeltaCodec(0, deltaDecodes),
		Sources:  d.chunkSources(),
		Upstream: fetch.Upstream{Caches: d.upstreams, Keys: keys, Log: d.log},
		Params:   cfg.Params,
		Counters: d.metrics,
		Log:      d.log,

		MaxDeltaDecodes: deltaDecodes,
	}
	d.metrics.setGauges(d.gauges)
	d.narInfos = newNarInfoWriter(d.cache.PutNarInfo, d.log)
	return d, nil
}

// chunkSources lists where chunks come from after the local cache, cheapest first:
// the local /nix/store (no network), peers (no store or upstream bytes), then the
// chunk store. The upstreams' whole NARs are the fetcher's last resort.
func (d *Daemon) chunkSources() []fetch.Source {
	var sources []fetch.Source
	if d.local != nil {
		sources = append(sources, d.local)
	}
	if d.peers != nil {
		sources = append(sources, d.peers)
	}
	if d.storeSource != nil {
		sources = append(sources, d.storeSource)
	}
	return sources
}

// openCache opens the cache file; a damaged one is moved aside and replaced by an
// empty cache, since everything in it can be fetched again, and a daemon that stops
// at a damaged file would be restarted into the same failure forever. The moved
// file stays for `shoal verify --repair` to salvage.
func openCache(path string, opts localcache.Options, log *slog.Logger) (*localcache.Cache, error) {
	c, err := localcache.Open(path, opts)
	if !errors.Is(err, localcache.ErrCorrupt) {
		return c, err
	}
	aside := fmt.Sprintf("%s.broken-%d", path, time.Now().Unix())
	log.Error("local cache file is damaged; moving it aside and starting with an empty cache", "file", path, "moved_to", aside, "err", err)
	if rerr := os.Rename(path, aside); rerr != nil {
		return nil, fmt.Errorf("%w (moving it aside: %w)", err, rerr)
	}
	return localcache.Open(path, opts)
}

// deltaDecodes bounds the delta objects decoded at once: decoding runs at hundreds of
// MB/s, so a few keep up with any link, and each holds up to 8 MiB (dictionary and
// chunk).
const deltaDecodes = 4

// Close releases the local cache.
func (d *Daemon) Close() error {
	// The narinfo lookups recorded so far are written before the cache closes.
	if d.narInfos != nil {
		d.narInfos.close()
	}
	if d.fetcher != nil {
		d.fetcher.Close()
	}
	if d.storeSource != nil {
		d.storeSource.Close()
	}
	return d.closeParts()
}

// closeParts closes what New opened before the fetcher.
func (d *Daemon) closeParts() error {
	if d.peers != nil {
		_ = d.peers.Close()
	}
	err := d.cache.Close()
	d.codec.Close()
	return err
}

// Metrics returns the daemon's counters.
func (d *Daemon) Metrics() *Metrics { return d.metrics }

// Serve answers Nix on ln until ctx ends, then drains in-flight requests for a while.
func (d *Daemon) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           cutStalledWriters(d.cfg.StallTimeout, d.Handler()),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	d.logStart(ln.Addr())
	// The listener is bound, so connections queue from here on: Nix may be let in.
	d.sdNotify("READY=1\nSTATUS=serving Nix on " + ln.Addr().String())
	go d.pruneLoop(ctx)
	if d.store != nil && !isLocalStore(d.cfg.StoreURL) {
		go d.watchStore(ctx)
	}
	go d.pinLoop(ctx)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	d.sdNotify("STOPPING=1")
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return fmt.Errorf("shutting down HTTP server: %w", err)
	}
	d.log.Info("stopped serving Nix", "listen", ln.Addr().String())
	return nil
}

func (d *Daemon) pruneLoop(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := d.cache.Prune(d.now()); err != nil {
				d.log.Warn("pruning local cache", "err", err)
			} else if n > 0 {
				d.log.Info("pruned expired narinfo entries and routes", "removed", n)
			}
		}
	}
}
