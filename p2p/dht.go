package p2p

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p-kad-dht/amino"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/multiformats/go-multihash"

	"github.com/shoal-nix/shoal/manifest"
)

// DHTProtocolPrefix keeps shoal's DHT apart from IPFS's Amino DHT: nodes speaking
// /shoal/kad/1.0.0 only ever route to each other, so shoal never joins (or floods)
// the public network, and nothing else's records land in shoal nodes.
const DHTProtocolPrefix protocol.ID = "/shoal"

// DefaultAnnounceMax is how many NARs a daemon announces unless told otherwise. Each
// announced NAR costs a DHT lookup and about 20 connections every reprovide interval,
// so the most recently used NARs are announced and the rest are not.
const DefaultAnnounceMax = 2000

// DHTModes are the accepted --dht-mode values.
var DHTModes = []string{"server", "client", "auto"}

// DHTConfig turns on the kad-DHT: provider records say which daemons hold a NAR, so
// that daemons on different networks find each other. Zero fields take the defaults
// in parentheses.
type DHTConfig struct {
	// Mode is "server" (answer DHT queries and hold records for others), "client"
	// (only ask) or "auto" (server once libp2p thinks the host is publicly reachable,
	// which nodes on one private network never are). ("server")
	Mode string
	// Bootstrap holds /…/p2p/<id> multiaddrs to join through. No public bootstrap
	// peers are ever used: a DHT without any only grows through peers that dial in.
	Bootstrap []string
	// AnnounceMax bounds how many NARs are announced, most recently used first
	// (DefaultAnnounceMax).
	AnnounceMax int
	// AnnounceFile keeps the announced list and when each was last announced, so a
	// restart continues the schedule instead of announcing everything again. Empty
	// keeps it in memory only.
	AnnounceFile string
	// AnnounceRate bounds announcements a second, so a restart or a burst of new NARs
	// doesn't open hundreds of connections at once (2).
	AnnounceRate float64
	// Reprovide is how often each NAR is announced again (amino.DefaultReprovideInterval,
	// 22h, within the 48h a record lives).
	Reprovide time.Duration
	// FindTimeout bounds the provider lookup for one NAR (10s).
	FindTimeout time.Duration
	// RecordFile keeps the provider records this node holds for others (a bbolt
	// file), so they survive a restart. Empty keeps them in memory only.
	RecordFile string
}

func (c *DHTConfig) defaults() {
	if c.Mode == "" {
		c.Mode = "server"
	}
	if c.AnnounceMax <= 0 {
		c.AnnounceMax = DefaultAnnounceMax
	}
	if c.AnnounceRate <= 0 {
		c.AnnounceRate = 2
	}
	if c.Reprovide <= 0 {
		c.Reprovide = amino.DefaultReprovideInterval
	}
	if c.FindTimeout <= 0 {
		c.FindTimeout = 10 * time.Second
	}
}

// parseDHTMode maps a --dht-mode value to the library's mode.
func parseDHTMode(s string) (dht.ModeOpt, error) {
	switch s {
	case "server":
		return dht.ModeServer, nil
	case "client":
		return dht.ModeClient, nil
	case "auto":
		return dht.ModeAuto, nil
	}
	return 0, fmt.Errorf("DHT mode %q: want one of %s", s, strings.Join(DHTModes, ", "))
}

// ParseBootstrap reads bootstrap multiaddrs, each of which must name its peer ID.
func ParseBootstrap(addrs []string) ([]peer.AddrInfo, error) {
	var mas []ma.Multiaddr
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("bootstrap peer %q: %w", s, err)
		}
		if _, err := a.ValueForProtocol(ma.P_P2P); err != nil {
			return nil, fmt.Errorf("bootstrap peer %q: no /p2p/<peer id> at its end (shoal id prints a daemon's)", s)
		}
		mas = append(mas, a)
	}
	infos, err := peer.AddrInfosFromP2pAddrs(mas...)
	if err != nil {
		return nil, fmt.Errorf("bootstrap peers: %w", err)
	}
	return infos, nil
}

// NarCID is the DHT key of a NAR: its NarHash as a sha2-256 multihash in a raw CIDv1.
// Only whole NARs are keys: a chunk each would multiply the records by thousands.
func NarCID(narHash [32]byte) cid.Cid {
	mh, err := multihash.Encode(narHash[:], multihash.SHA2_256)
	if err != nil {
		panic(fmt.Sprintf("encoding a 32-byte sha2-256 multihash: %v", err)) // can't happen
	}
	return cid.NewCidV1(cid.Raw, mh)
}

// dhtNode is the node's part in the DHT: the routing table, the announcer keeping its
// NARs' provider records fresh, and a short memory of lookups so the manifest and the
// chunk requests for one NAR share one lookup.
type dhtNode struct {
	n       *Node
	cfg     DHTConfig
	kad     *dht.IpfsDHT
	ann     *announcer
	records *recordStore // nil: records for others in memory
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu    sync.Mutex
	found map[[32]byte]lookup
}

type lookup struct {
	peers []peer.ID
	at    time.Time
}

// lookupTTL is how long a provider lookup's answer is reused for the same NAR.
const lookupTTL = time.Minute

func startDHT(n *Node, cfg DHTConfig) (*dhtNode, error) {
	cfg.defaults()
	mode, err := parseDHTMode(cfg.Mode)
	if err != nil {
		return nil, err
	}
	boot, err := ParseBootstrap(cfg.Bootstrap)
	if err != nil {
		return nil, err
	}
	opts := []dht.Option{
		dht.Mode(mode),
		dht.ProtocolPrefix(DHTProtocolPrefix),
		dht.BootstrapPeers(boot...),
		// shoal uses provider records only. Value records (/pk, /ipns) would let any
		// DHT member store data here, each PUT an fsync'd write outside the cache
		// budget.
		dht.DisableValues(),
	}
	var records *recordStore
	if cfg.RecordFile != "" {
		if records, err = openRecordStore(cfg.RecordFile, n.log); err != nil {
			return nil, err
		}
		opts = append(opts, dht.Datastore(records))
	}
	kad, err := dht.New(n.host, opts...)
	if err != nil {
		if records != nil {
			records.Close()
		}
		return nil, fmt.Errorf("starting the DHT: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &dhtNode{n: n, cfg: cfg, kad: kad, records: records, cancel: cancel, found: map[[32]byte]lookup{}}
	d.ann, err = newAnnouncer(announcerConfig{
		max: cfg.AnnounceMax, path: cfg.AnnounceFile, rate: cfg.AnnounceRate, interval: cfg.Reprovide,
		provide: func(ctx context.Context, h [32]byte) error { return kad.Provide(ctx, NarCID(h), true) },
		log:     n.log,
	})
	if err != nil {
		cancel()
		kad.Close()
		if records != nil {
			records.Close()
		}
		return nil, err
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.ann.run(ctx)
	}()
	for _, ai := range boot {
		if ai.ID == n.host.ID() {
			continue
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.join(ctx, ai)
		}()
	}
	n.log.Info("DHT on", "mode", cfg.Mode, "protocol_prefix", string(DHTProtocolPrefix), "bootstrap_peers", len(boot),
		"announce_max", cfg.AnnounceMax, "reprovide", cfg.Reprovide)
	return d, nil
}

// join dials a bootstrap peer until it answers (it may start after this daemon), then
// fills the routing table through it.
func (d *dhtNode) join(ctx context.Context, ai peer.AddrInfo) {
	wait := time.Second
	for {
		err := d.n.Connect(ctx, ai)
		if err == nil {
			d.n.log.Info("joined the DHT through a bootstrap peer", "peer", ai.ID.String())
			select {
			case <-d.kad.RefreshRoutingTable():
			case <-ctx.Done():
			}
			return
		}
		d.n.log.Debug("bootstrap peer unreachable; retrying", "peer", ai.ID.String(), "in", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
		wait = min(2*wait, 30*time.Second)
	}
}

func (d *dhtNode) close() {
	d.cancel()
	d.wg.Wait()
	if err := d.ann.save(); err != nil {
		d.n.log.Warn("keeping the announced NAR list", "err", err)
	}
	_ = d.kad.Close()
	if d.records != nil {
		if err := d.records.Close(); err != nil {
			d.n.log.Warn("closing the DHT record file", "err", err)
		}
	}
}

// providers finds peers that announced the NAR, connects to them, and returns those
// that answered, all within FindTimeout. Dead providers (records outlive their
// daemons by up to 48h) cost one failed dial each, in parallel with the rest; once
// one provider answered, the rest get connectGrace more.
func (d *dhtNode) providers(ctx context.Context, narHash [32]byte) []peer.ID {
	d.mu.Lock()
	if l, ok := d.found[narHash]; ok && time.Since(l.at) < lookupTTL {
		d.mu.Unlock()
		return l.peers
	}
	d.mu.Unlock()

	began := time.Now()
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, d.cfg.FindTimeout)
	defer cancel()
	var (
		peers   []peer.ID
		first   time.Duration
		seen    int
		pending int
		grace   <-chan time.Time
	)
	// Each dial reports here; the buffer lets a dial finish after the lookup returned.
	results := make(chan peer.ID, maxAsk)
	found := d.kad.FindProvidersAsync(ctx, NarCID(narHash), maxAsk)
collect:
	for {
		select {
		case ai, ok := <-found:
			if !ok {
				found = nil
				if pending == 0 {
					break collect
				}
				continue
			}
			if ai.ID == d.n.host.ID() || d.n.blocks.blocked(ai.ID) || seen == maxAsk {
				continue
			}
			seen++
			pending++
			go func() { results <- d.dialProvider(ctx, narHash, ai) }()
		case id := <-results:
			pending--
			if id != "" {
				if len(peers) == 0 {
					first = time.Since(began)
					grace = time.After(connectGrace)
				}
				peers = append(peers, id)
			}
			if found == nil && pending == 0 {
				break collect
			}
		case <-grace:
			break collect
		case <-ctx.Done():
			break collect
		}
	}
	if len(peers) > 0 {
		d.n.log.Info("DHT providers found", "nar", manifest.Key(narHash), "providers", len(peers), "records", seen,
			"first_after", first.Round(time.Microsecond), "took", time.Since(began).Round(time.Microsecond))
	} else {
		d.n.log.Debug("no DHT provider", "nar", manifest.Key(narHash), "records", seen, "took", time.Since(began).Round(time.Millisecond))
	}
	d.mu.Lock()
	for k, l := range d.found {
		if time.Since(l.at) >= lookupTTL {
			delete(d.found, k)
		}
	}
	// A lookup that ran out of its own time is remembered too, so the manifest and the
	// chunk requests for one NAR don't each wait FindTimeout; one cut short by its
	// caller is not.
	if parent.Err() == nil {
		d.found[narHash] = lookup{peers: peers, at: time.Now()}
	}
	d.mu.Unlock()
	return peers
}

// connectGrace is how long, once one provider answered, the lookup and the dials to
// other providers may still take: one provider is enough to start, and a frozen
// provider (or a DHT peer that stopped answering) must not hold up the fetch.
const connectGrace = time.Second

// dialProvider connects to a provider the lookup named, returning its ID, or "" when
// it can't be reached.
func (d *dhtNode) dialProvider(ctx context.Context, narHash [32]byte, ai peer.AddrInfo) peer.ID {
	if len(ai.Addrs) == 0 && len(d.n.host.Peerstore().Addrs(ai.ID)) == 0 {
		// A record kept across a restart names the provider, not its addresses: ask
		// the DHT where it is.
		found, err := d.kad.FindPeer(ctx, ai.ID)
		if err != nil {
			d.n.log.Info("DHT provider not found", "nar", manifest.Key(narHash), "peer", ai.ID.String(), "err", err)
			return ""
		}
		ai = found
	}
	if err := d.n.dial(ctx, ai); err != nil {
		d.n.log.Info("DHT provider unreachable", "nar", manifest.Key(narHash), "peer", ai.ID.String(), "err", err)
		return ""
	}
	return ai.ID
}

// Announce records that this daemon holds the verified NAR and uses it now: it is
// announced on the DHT soon (rate-limited) unless it already is, and moves to the
// front of the announced list. Without the DHT it does nothing.
func (n *Node) Announce(narHash [32]byte) {
	if n.dht != nil {
		n.dht.ann.touch(narHash)
	}
}

// providersFor returns the DHT providers of a NAR, connected; nil without the DHT.
func (n *Node) providersFor(ctx context.Context, narHash [32]byte) []peer.ID {
	if n.dht == nil {
		return nil
	}
	return n.dht.providers(ctx, narHash)
}

// DHTStats are the DHT's counters, for metrics.
type DHTStats struct {
	RoutingTable int   // peers in the routing table
	Announced    int   // NARs on the announced list
	Provides     int64 // successful announcements since start
	ProvideFails int64
}

// DHTStats reads the DHT's counters; ok is false without the DHT.
func (n *Node) DHTStats() (s DHTStats, ok bool) {
	if n.dht == nil {
		return s, false
	}
	s.RoutingTable = n.dht.kad.RoutingTable().Size()
	s.Announced, s.Provides, s.ProvideFails = n.dht.ann.stats()
	return s, true
}
