// Package p2p lets shoal daemons on one LAN serve each other chunks, manifests and
// narinfos over libp2p, found through mDNS under shoal's own service name.
//
// Nothing a peer sends is trusted: narinfos are checked against the daemon's trusted
// keys, manifests by assembling the NAR they describe, chunks against their IDs. A
// peer that sends a chunk failing its ID check, or hangs, is dropped for a while. A
// daemon serves only what belongs to NARs it verified itself, answers "do you have
// this NAR" but never lists its holdings, and asks specific peers, never broadcasting
// its wants.
package p2p

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"golang.org/x/time/rate"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/internal/lru"
)

// DefaultPort is where daemons listen for peers unless told otherwise.
const DefaultPort = 37516

// ServiceName is shoal's mDNS service; IPFS's would mix shoal into other networks.
const ServiceName = "_shoal-p2p._udp"

// DefaultListen returns the default peer addresses: TCP and QUIC on DefaultPort, TCP
// only with a fleet key, since libp2p's private networks can't protect QUIC.
func DefaultListen(withFleetKey bool) []string {
	addrs := []string{
		fmt.Sprintf("/ip4/0.0.0.0/tcp/%d", DefaultPort),
		fmt.Sprintf("/ip6/::/tcp/%d", DefaultPort),
	}
	if !withFleetKey {
		addrs = append(addrs,
			fmt.Sprintf("/ip4/0.0.0.0/udp/%d/quic-v1", DefaultPort),
			fmt.Sprintf("/ip6/::/udp/%d/quic-v1", DefaultPort))
	}
	return addrs
}

// Backend is what a node serves to its peers: the daemon's local cache.
type Backend interface {
	// NarInfo returns a narinfo the daemon accepted under its trusted keys.
	NarInfo(hashPart string) ([]byte, bool)
	// VerifiedManifest returns the manifest of a NAR the daemon assembled and checked
	// against a trusted narinfo, and nothing for any other NAR.
	VerifiedManifest(narHash [32]byte) ([]byte, bool)
	// Chunk returns a local chunk's stored object.
	Chunk(ctx context.Context, id chunk.ID) ([]byte, error)
}

// VerifiedChecker is a Backend that can tell whether it holds a verified NAR without
// producing its manifest: a "have" question costs the asker 32 bytes, and must not
// cost the answerer a copy (and a hash) of a manifest that may be megabytes. A
// Backend without it is asked for the manifest.
type VerifiedChecker interface {
	HasVerified(narHash [32]byte) bool
}

// Config sets up a Node. Zero durations take the defaults in parentheses.
type Config struct {
	Identity crypto.PrivKey
	// Listen holds multiaddrs; empty means DefaultListen.
	Listen []string
	// FleetKey, when set, makes a private network: only nodes with the same key connect.
	FleetKey pnet.PSK
	// UploadLimit bounds the bytes a second sent to peers (0: no bound).
	UploadLimit int64
	// MDNS turns on discovery; without it the node only talks to peers added with
	// Connect.
	MDNS        bool
	ServiceName string // ServiceName
	Backend     Backend
	Log         *slog.Logger

	// DHT, when set, joins shoal's kad-DHT, to find peers holding a NAR beyond the
	// LAN and to announce the NARs this node holds.
	DHT *DHTConfig

	StreamTimeout time.Duration // one small request and its answer (10s)
	BatchTimeout  time.Duration // one batch of chunks (30s)
	HaveTimeout   time.Duration // the "have" round before a NAR (2s)
	NarBudget     time.Duration // all peer requests for one NAR (2m)
	DropFor       time.Duration // how long a misbehaving peer is shunned (10m)

	// DeltaEncoders bounds the deltas computed for peers at once (1); requests beyond
	// it are answered "busy" at once. Negative turns delta serving off.
	DeltaEncoders int
	// DeltaCacheSize bounds the memory kept for computed deltas (32 MiB).
	DeltaCacheSize int64

	// RequestRate and RequestBurst bound the requests one peer may make a second and
	// at once (peerRate, peerBurst); those beyond are refused unread.
	RequestRate  float64
	RequestBurst int
}

// manifestSenders bounds the manifest senders remembered: enough for every NAR
// being fetched at once, many times over.
const manifestSenders = 1024

func (c *Config) defaults() {
	if len(c.Listen) == 0 {
		c.Listen = DefaultListen(c.FleetKey != nil)
	}
	if c.ServiceName == "" {
		c.ServiceName = ServiceName
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.StreamTimeout, 10*time.Second)
	def(&c.BatchTimeout, 30*time.Second)
	def(&c.HaveTimeout, 2*time.Second)
	def(&c.NarBudget, 2*time.Minute)
	def(&c.DropFor, 10*time.Minute)
	if c.DeltaEncoders == 0 {
		c.DeltaEncoders = DefaultDeltaEncoders
	}
	if c.DeltaCacheSize <= 0 {
		c.DeltaCacheSize = 32 << 20
	}
	if c.RequestRate <= 0 {
		c.RequestRate = peerRate
	}
	if c.RequestBurst <= 0 {
		c.RequestBurst = peerBurst
	}
}

// DefaultDeltaEncoders is one: a delta against three 64 KiB bases takes a few
// milliseconds of one core (see BenchmarkServeDelta), so one encoder answers a few
// hundred deltas a second, more chunk bytes than most LAN links carry in full, while
// the rest of the machine stays with its owner.
const DefaultDeltaEncoders = 1

// encoderIdle is how long delta encoders are kept after the last encode. Each holds
// about 30 MiB (an 8 MiB window and tables for a 4 MiB dictionary): worth keeping
// through an upgrade wave, not for the days between releases.
const encoderIdle = 2 * time.Minute

// Node is a daemon's presence on the LAN: it serves its Backend and fetches from peers.
type Node struct {
	cfg    Config
	log    *slog.Logger
	host   host.Host
	cm     *connmgr.BasicConnMgr
	blocks *blocklist
	// manifestFrom remembers who sent the manifests of NARs being fetched, to drop
	// a peer whose manifest does not assemble (see RejectManifest).
	manifestFrom *lru.Cache[[32]byte, peer.ID]
	limiter      *rate.Limiter
	mdns         *discovery
	dht          *dhtNode

	// Serving deltas: codec checks the local chunks a delta is made of, deltaSem
	// holds one token per encode running, releaseEncoders swaps deltas for a fresh
	// codec, freeing the encoders kept, once deltas stop being asked for.
	codec           *chunk.Codec
	deltas          atomic.Pointer[chunk.DeltaCodec]
	releaseEncoders *time.Timer
	deltaSem        chan struct{}
	deltaCache      *deltaCache
	manifests       manifestIndex

	servedChunks     atomic.Int64
	servedBytes      atomic.Int64
	fetchedBytes     atomic.Int64
	transfers        atomic.Uint64
	servedDeltas     atomic.Int64
	servedDeltaBytes atomic.Int64
	deltasComputed   atomic.Int64
	deltaCacheHits   atomic.Int64
	deltaBusy        atomic.Int64

	// found holds the peers this node found itself (mDNS, bootstrap, Connect): the
	// ones its questions go to, with the NAR's DHT providers. A peer that merely
	// connected is never asked, so it learns nothing of what this machine installs.
	found peerSet
	// lookups bounds the requests served at once, over all peers; limits holds a
	// request rate per peer.
	lookups chan struct{}
	limits  peerLimits
}

// maxLookups bounds the peer requests served at once: each reads the cache and may
// hold a chunk batch of up to 4 MiB.
const maxLookups = 32

// New starts the libp2p host and, with MDNS, discovery, and with DHT the kad-DHT.
// Nothing reaches past the LAN unless DHT names bootstrap peers: no public bootstrap
// peers, no relays, no NAT port mapping, no hole punching.
func New(cfg Config) (*Node, error) {
	cfg.defaults()
	if cfg.Identity == nil {
		return nil, errors.New("p2p: no identity")
	}
	if cfg.Backend == nil {
		return nil, errors.New("p2p: no backend")
	}
	var addrs []ma.Multiaddr
	for _, s := range cfg.Listen {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("peer listen address %q: %w", s, err)
		}
		if cfg.FleetKey != nil {
			if _, err := a.ValueForProtocol(ma.P_TCP); err != nil {
				return nil, fmt.Errorf("peer listen address %q: with a fleet key only TCP addresses work (libp2p private networks don't support QUIC)", s)
			}
		}
		addrs = append(addrs, a)
	}
	n := &Node{cfg: cfg, log: cfg.Log, blocks: &blocklist{until: make(map[peer.ID]time.Time)},
		manifestFrom: lru.New[[32]byte, peer.ID](manifestSenders, time.Hour),
		lookups:      make(chan struct{}, maxLookups), limits: peerLimits{rate: rate.Limit(cfg.RequestRate), burst: cfg.RequestBurst}}
	if cfg.UploadLimit > 0 {
		n.limiter = rate.NewLimiter(rate.Limit(cfg.UploadLimit), uploadBurst)
	}
	var err error
	// Peers being fetched from are protected; others may be trimmed past 64.
	if n.cm, err = connmgr.NewConnManager(32, 64, connmgr.WithGracePeriod(time.Minute)); err != nil {
		return nil, fmt.Errorf("connection manager: %w", err)
	}
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	for _, p := range []protocol.ID{ProtoNarInfo, ProtoManifest, ProtoHave, ProtoChunks, ProtoDelta} {
		limits.AddProtocolLimit(p,
			rcmgr.BaseLimit{Streams: 512, StreamsInbound: 256, StreamsOutbound: 256, Memory: 256 << 20},
			rcmgr.BaseLimitIncrease{})
		limits.AddProtocolPeerLimit(p,
			rcmgr.BaseLimit{Streams: 64, StreamsInbound: 16, StreamsOutbound: 48, Memory: 64 << 20},
			rcmgr.BaseLimitIncrease{})
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()))
	if err != nil {
		return nil, fmt.Errorf("resource manager: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(cfg.Identity),
		libp2p.ListenAddrs(addrs...),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(n.cm),
		libp2p.ConnectionGater(n.blocks),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
		libp2p.UserAgent("shoal"),
		libp2p.Transport(tcp.NewTCPTransport),
	}
	if cfg.FleetKey != nil {
		opts = append(opts, libp2p.PrivateNetwork(cfg.FleetKey))
	} else {
		opts = append(opts, libp2p.Transport(quic.NewTransport))
	}
	if n.host, err = libp2p.New(opts...); err != nil {
		rm.Close()
		return nil, fmt.Errorf("starting peer host: %w", err)
	}
	n.host.SetStreamHandler(ProtoNarInfo, n.handleNarInfo)
	n.host.SetStreamHandler(ProtoManifest, n.handleManifest)
	n.host.SetStreamHandler(ProtoHave, n.handleHave)
	n.host.SetStreamHandler(ProtoChunks, n.handleChunks)
	if cfg.DeltaEncoders > 0 {
		if n.codec, err = chunk.NewCodec(); err != nil {
			n.host.Close()
			return nil, err
		}
		n.deltas.Store(chunk.NewDeltaCodec(0, cfg.DeltaEncoders))
		n.releaseEncoders = time.AfterFunc(encoderIdle, n.freeEncoders)
		n.deltaSem = make(chan struct{}, cfg.DeltaEncoders)
		n.deltaCache = newDeltaCache(cfg.DeltaCacheSize)
		n.host.SetStreamHandler(ProtoDelta, n.handleDelta)
	}
	if cfg.MDNS {
		if n.mdns, err = startDiscovery(n); err != nil {
			n.Close()
			return nil, err
		}
	}
	if cfg.DHT != nil {
		if n.dht, err = startDHT(n, *cfg.DHT); err != nil {
			n.Close()
			return nil, err
		}
	}
	n.log.Info("LAN sharing on", "peer_id", n.host.ID().String(), "addrs", fmt.Sprint(n.host.Addrs()),
		"private_network", cfg.FleetKey != nil, "mdns", cfg.MDNS, "upload_limit", cfg.UploadLimit)
	return n, nil
}

// Close stops discovery, the DHT (keeping the announced list) and the host, closing
// every connection.
func (n *Node) Close() error {
	if n.mdns != nil {
		n.mdns.close()
	}
	if n.dht != nil {
		n.dht.close()
	}
	err := n.host.Close()
	if n.codec != nil {
		n.releaseEncoders.Stop()
		n.codec.Close()
		n.deltas.Load().Close()
	}
	return err
}

// freeEncoders lets the delta encoders kept go: encodes running finish with theirs,
// later ones make new ones.
func (n *Node) freeEncoders() {
	n.deltas.Swap(chunk.NewDeltaCodec(0, n.cfg.DeltaEncoders)).Close()
}

// ID is the node's peer ID.
func (n *Node) ID() peer.ID { return n.host.ID() }

// AddrInfo is how other nodes reach this one.
func (n *Node) AddrInfo() peer.AddrInfo {
	return peer.AddrInfo{ID: n.host.ID(), Addrs: n.host.Addrs()}
}

// Connect dials a peer, unless it is being shunned, and counts it among the peers
// this node asks.
func (n *Node) Connect(ctx context.Context, ai peer.AddrInfo) error {
	if ai.ID != n.host.ID() {
		n.found.add(ai.ID)
	}
	return n.dial(ctx, ai)
}

// dial connects to a peer without counting it among those asked about every NAR (a
// DHT provider is asked about the NAR it announced).
func (n *Node) dial(ctx context.Context, ai peer.AddrInfo) error {
	if ai.ID == n.host.ID() {
		return nil
	}
	if n.blocks.blocked(ai.ID) {
		return fmt.Errorf("peer %s is dropped for misbehaving", ai.ID)
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.StreamTimeout)
	defer cancel()
	if err := n.host.Connect(ctx, ai); err != nil {
		return fmt.Errorf("connecting to peer %s: %w", ai.ID, err)
	}
	return nil
}

// Peers returns the connected peers that are not being shunned.
func (n *Node) Peers() []peer.ID {
	var out []peer.ID
	for _, p := range n.host.Network().Peers() {
		if !n.blocks.blocked(p) {
			out = append(out, p)
		}
	}
	return out
}

// askable returns the connected peers questions may go to: with a fleet key every
// connected peer holds the key; without one, only those this node found itself.
func (n *Node) askable() []peer.ID {
	peers := n.Peers()
	if n.cfg.FleetKey != nil {
		return peers
	}
	out := peers[:0]
	for _, p := range peers {
		if n.found.has(p) {
			out = append(out, p)
		}
	}
	return out
}

// peerSet is a set of peer IDs, bounded so that a flood of mDNS announcements can't
// grow it without end.
type peerSet struct {
	mu sync.Mutex
	m  map[peer.ID]bool
}

const maxFoundPeers = 4096

func (s *peerSet) add(p peer.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[peer.ID]bool{}
	}
	if len(s.m) < maxFoundPeers {
		s.m[p] = true
	}
}

func (s *peerSet) has(p peer.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[p]
}

// Stats are the node's counters, for metrics.
type Stats struct {
	Peers        int
	ServedChunks int64
	ServedBytes  int64
	FetchedBytes int64

	// ServedDeltas and ServedDeltaBytes count deltas sent to peers, from the cache
	// or computed; DeltasComputed the encodes run (including those that came out no
	// smaller than the chunk and were refused); DeltaCacheHits the answers the cache
	// gave; DeltaBusy the requests refused because every encoder was taken.
	ServedDeltas     int64
	ServedDeltaBytes int64
	DeltasComputed   int64
	DeltaCacheHits   int64
	DeltaBusy        int64
}

// Stats reads the counters.
func (n *Node) Stats() Stats {
	return Stats{
		Peers:        len(n.Peers()),
		ServedChunks: n.servedChunks.Load(),
		ServedBytes:  n.servedBytes.Load(),
		FetchedBytes: n.fetchedBytes.Load(),

		ServedDeltas:     n.servedDeltas.Load(),
		ServedDeltaBytes: n.servedDeltaBytes.Load(),
		DeltasComputed:   n.deltasComputed.Load(),
		DeltaCacheHits:   n.deltaCacheHits.Load(),
		DeltaBusy:        n.deltaBusy.Load(),
	}
}

// drop shuns a peer for DropFor and closes its connections: it sent a chunk that failed
// its ID check, broke the protocol, or let a request time out.
func (n *Node) drop(p peer.ID, reason string) {
	n.blocks.block(p, time.Now().Add(n.cfg.DropFor))
	n.log.Warn("dropping peer", "peer", p.String(), "for", n.cfg.DropFor, "reason", reason)
	_ = n.host.Network().ClosePeer(p)
}

// protect keeps the connection to p open while a transfer runs; call the result after.
func (n *Node) protect(p peer.ID) func() {
	tag := fmt.Sprintf("shoal-transfer-%d", n.transfers.Add(1))
	n.cm.Protect(p, tag)
	return func() { n.cm.Unprotect(p, tag) }
}

// blocklist shuns peers until a time; it is also the connection gater, so a dropped
// peer can't simply connect again.
type blocklist struct {
	mu    sync.Mutex
	until map[peer.ID]time.Time
}

func (b *blocklist) block(p peer.ID, until time.Time) {
	b.mu.Lock()
	b.until[p] = until
	b.mu.Unlock()
}

func (b *blocklist) blocked(p peer.ID) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.until[p]
	if ok && time.Now().After(t) {
		delete(b.until, p)
		return false
	}
	return ok
}

func (b *blocklist) InterceptPeerDial(p peer.ID) bool                 { return !b.blocked(p) }
func (b *blocklist) InterceptAddrDial(_ peer.ID, a ma.Multiaddr) bool { return true }
func (b *blocklist) InterceptAccept(network.ConnMultiaddrs) bool      { return true }
func (b *blocklist) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}
func (b *blocklist) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return !b.blocked(p)
}

// lanAddr tells whether a discovered address is worth dialling: loopback addresses
// name the asker itself, and unspecified ones nobody.
func lanAddr(a ma.Multiaddr) bool {
	ip, err := manet.ToIP(a)
	if err != nil {
		return false
	}
	return !ip.IsLoopback() && !ip.IsUnspecified() && !ip.IsMulticast() && (ip.IsPrivate() || ip.IsLinkLocalUnicast() || isLocalNet(ip))
}

// isLocalNet reports whether ip is on a subnet of one of this machine's interfaces, so
// that LANs numbered with public addresses work too.
func isLocalNet(ip net.IP) bool {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range ifaddrs {
		if n, ok := a.(*net.IPNet); ok && n.Contains(ip) {
			return true
		}
	}
	return false
}
