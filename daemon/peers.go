package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/p2p"
)

// peerSourceName names LAN peers in logs, metrics and narinfo sources.
const peerSourceName = "peers"

// PeerTuning overrides the LAN timeouts; zero fields keep p2p's defaults. Tests use it
// to see a hanging peer given up on quickly.
type PeerTuning struct {
	StreamTimeout time.Duration
	BatchTimeout  time.Duration
	NarBudget     time.Duration
	DropFor       time.Duration
}

// startPeers starts the peer node: a libp2p host with the identity kept in the state
// directory, serving this daemon's verified NARs and asked for chunks before the
// store, finding peers with mDNS (LAN), the DHT (DHT), or both.
func (d *Daemon) startPeers() error {
	key, err := p2p.LoadIdentity(d.cfg.StateDir)
	if err != nil {
		return err
	}
	pc := p2p.Config{
		Identity:      key,
		Listen:        d.cfg.PeerListen,
		UploadLimit:   d.cfg.PeerUploadLimit,
		DeltaEncoders: d.cfg.PeerDeltaEncoders,
		MDNS:          d.cfg.LAN,
		Backend:       peerBackend{d},
		Log:           d.log.With("component", "p2p"),
		StreamTimeout: d.cfg.Peer.StreamTimeout,
		BatchTimeout:  d.cfg.Peer.BatchTimeout,
		NarBudget:     d.cfg.Peer.NarBudget,
		DropFor:       d.cfg.Peer.DropFor,
	}
	if d.cfg.DHT {
		pc.DHT = &p2p.DHTConfig{
			Mode:         d.cfg.DHTMode,
			Bootstrap:    d.cfg.BootstrapPeers,
			AnnounceMax:  d.cfg.AnnounceMax,
			AnnounceFile: filepath.Join(d.cfg.StateDir, AnnouncedFile),
			RecordFile:   filepath.Join(d.cfg.StateDir, RecordFile),
		}
	}
	if d.cfg.FleetKeyFile != "" {
		if pc.FleetKey, err = p2p.ReadFleetKey(d.cfg.FleetKeyFile); err != nil {
			return err
		}
	}
	if d.peers, err = p2p.New(pc); err != nil {
		return err
	}
	return nil
}

// peerGauges reads the peer node's counters for /metrics.
func (d *Daemon) peerGauges() []Gauge {
	s := d.peers.Stats()
	gs := []Gauge{
		{"shoal_peers_connected", "LAN peers connected and not dropped.", int64(s.Peers)},
		{"shoal_peer_served_chunks", "Chunks served to LAN peers since the daemon started.", s.ServedChunks},
		{"shoal_peer_served_bytes", "Stored bytes of the chunks served to LAN peers since the daemon started.", s.ServedBytes},
		{"shoal_peer_served_deltas", "Deltas served to LAN peers since the daemon started, computed or cached.", s.ServedDeltas},
		{"shoal_peer_served_delta_bytes", "Bytes of the deltas served to LAN peers since the daemon started.", s.ServedDeltaBytes},
		{"shoal_peer_deltas_computed", "Deltas encoded for LAN peers since the daemon started.", s.DeltasComputed},
		{"shoal_peer_delta_cache_hits", "Delta requests from LAN peers answered from the delta cache.", s.DeltaCacheHits},
		{"shoal_peer_delta_busy", "Delta requests from LAN peers refused because every delta encoder was taken.", s.DeltaBusy},
	}
	if ds, ok := d.peers.DHTStats(); ok {
		gs = append(gs,
			Gauge{"shoal_dht_routing_table_peers", "Peers in the DHT routing table.", int64(ds.RoutingTable)},
			Gauge{"shoal_dht_announced_nars", "NARs on the announced list (bounded by --dht-announce-max).", int64(ds.Announced)},
			Gauge{"shoal_dht_provides", "Successful NAR announcements since the daemon started.", ds.Provides},
			Gauge{"shoal_dht_provide_failures", "Failed NAR announcements since the daemon started.", ds.ProvideFails},
		)
	}
	return gs
}

// AnnouncedFile, in the state directory, lists the NARs announced on the DHT, most
// recently used first, with when each was last announced.
const AnnouncedFile = "dht-announced"

// RecordFile, in the state directory, keeps the DHT provider records this daemon
// holds for others.
const RecordFile = "dht-records.db"

// announce puts a NAR this daemon just served verified at the front of the DHT's
// announced list; without the DHT it does nothing.
func (d *Daemon) announce(narHash [32]byte) {
	if d.peers != nil {
		d.peers.Announce(narHash)
	}
}

// Peers is the daemon's peer node, nil without --lan and --dht.
func (d *Daemon) Peers() *p2p.Node { return d.peers }

// peerNarInfo asks the LAN for a narinfo; each answer must pass the same checks as one
// from the upstream, so a lying peer's answer is skipped for an honest one.
func (d *Daemon) peerNarInfo(ctx context.Context, hashPart string) (*nixcache.NarInfo, error) {
	var ni *nixcache.NarInfo
	_, err := d.peers.NarInfo(ctx, hashPart, func(raw []byte) error {
		n, err := nixcache.ParseNarInfo(raw)
		if err != nil {
			return err
		}
		if n.HashPart() != hashPart {
			return fmt.Errorf("narinfo is for another path %s", n.StorePath)
		}
		if _, err := d.keys.Verify(n); err != nil {
			return err
		}
		if n, err = peerFields(n); err != nil {
			return err
		}
		ni = n
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ni, nil
}

// peerFields keeps of a peer's narinfo only the fields Nix needs: the signed ones
// (StorePath, NarHash, NarSize, References, Sig) and those shoal rewrites anyway (URL,
// Compression, FileHash, FileSize). Deriver, CA and unknown keys are signed by no one,
// and a peer could set them to anything, so they are not passed on to Nix.
func peerFields(n *nixcache.NarInfo) (*nixcache.NarInfo, error) {
	var b bytes.Buffer
	for line := range strings.SplitSeq(strings.TrimSuffix(string(n.Raw), "\n"), "\n") {
		key, _, _ := strings.Cut(line, ":")
		switch key {
		case "StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize", "References", "Sig":
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	return nixcache.ParseNarInfo(b.Bytes())
}

// peerBackend serves the local cache to peers, limited to what this daemon verified.
type peerBackend struct{ d *Daemon }

// NarInfo serves a narinfo only when this daemon verified its NAR: narinfos looked
// up but never fetched may come from a private --store, which a peer is not to read
// through this daemon, and tell what this machine's Nix merely asked about.
func (b peerBackend) NarInfo(hashPart string) ([]byte, bool) {
	e, err := b.d.cache.GetNarInfo(hashPart, b.d.now())
	if err != nil || e.Negative {
		return nil, false
	}
	ni, err := nixcache.ParseNarInfo(e.Raw)
	if err != nil {
		return nil, false
	}
	if ok, err := b.d.cache.HasVerified(manifest.Key(ni.NarHash)); err != nil || !ok {
		return nil, false
	}
	return e.Raw, true
}

// HasVerified answers "have" from the verified mark alone (see p2p.VerifiedChecker).
func (b peerBackend) HasVerified(narHash [32]byte) bool {
	ok, err := b.d.cache.HasVerified(manifest.Key(narHash))
	return err == nil && ok
}

func (b peerBackend) VerifiedManifest(narHash [32]byte) ([]byte, bool) {
	key := manifest.Key(narHash)
	raw, err := b.d.cache.GetManifest(key)
	if err != nil {
		return nil, false
	}
	ok, err := b.d.cache.IsVerified(key, sha256.Sum256(raw))
	if err != nil || !ok {
		return nil, false
	}
	return raw, true
}

func (b peerBackend) Chunk(ctx context.Context, id chunk.ID) ([]byte, error) {
	return b.d.cache.GetChunk(ctx, id)
}
