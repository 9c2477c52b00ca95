package p2p

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	dsq "github.com/ipfs/go-datastore/query"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// listener answers "not found" to every question and counts the questions it got.
type listener struct {
	mu    sync.Mutex
	asked map[protocol.ID]int
}

func listen(h host.Host) *listener {
	l := &listener{asked: map[protocol.ID]int{}}
	for _, p := range []protocol.ID{ProtoHave, ProtoNarInfo, ProtoManifest} {
		h.SetStreamHandler(p, func(s network.Stream) {
			_, _ = io.ReadAll(s)
			l.mu.Lock()
			l.asked[p]++
			l.mu.Unlock()
			if p == ProtoHave {
				_, _ = s.Write([]byte{0})
			} else {
				_, _ = s.Write([]byte{statusNotFound})
			}
			_ = s.Close()
		})
	}
	return l
}

func (l *listener) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.asked {
		n += c
	}
	return n
}

// TestStrangerIsNeverAsked connects a bare libp2p host without any fleet key to a
// node, as a passive listener on the LAN would, next to a peer the node found itself.
// The node's questions about NARs and narinfos reveal what its machine installs: they
// must go to the peer it found, never to the one that merely connected.
func TestStrangerIsNeverAsked(t *testing.T) {
	n := lanNode(t, &chunkBackend{}, nil)
	friend, stranger := rawHost(t), rawHost(t)
	heardByFriend, heardByStranger := listen(friend), listen(stranger)
	introduce(t, n, peer.AddrInfo{ID: friend.ID(), Addrs: friend.Addrs()})
	connect(t, stranger, n.AddrInfo())
	waitFor(t, 10*time.Second, "the stranger's connection never showed", func() bool {
		return len(n.host.Network().ConnsToPeer(stranger.ID())) > 0
	})

	ctx := context.Background()
	nar := sha256.Sum256([]byte("what this machine installs"))
	n.Have(ctx, nar)
	_, _, _ = n.askManifest(ctx, nar, func([]byte) error { return nil })
	_, _ = n.NarInfo(ctx, "0123456789abcdfghijklmnpqrsvwxyz", func([]byte) error { return nil })

	if c := heardByFriend.count(); c != 3 {
		t.Errorf("the peer the node found heard %d questions, want 3", c)
	}
	if c := heardByStranger.count(); c != 0 {
		t.Errorf("a stranger that merely connected heard %d questions", c)
	}
}

// TestFrameAllocatesAsItArrives announces a frame at the manifest bound and sends a
// few bytes of it: the reader must not allocate the announced size up front.
func TestFrameAllocatesAsItArrives(t *testing.T) {
	msg := binary.AppendUvarint(nil, MaxManifest)
	msg = append(msg, bytes.Repeat([]byte{7}, 1000)...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := readFrame(bufio.NewReader(bytes.NewReader(msg)), nil, MaxManifest)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated frame: %v, want unexpected EOF", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 4<<20 {
		t.Errorf("a %d-byte message made the reader allocate %d bytes", len(msg), got)
	}
}

// TestDHTStoresNoValues has a bare kad-DHT client without the fleet key put a
// public-key record (/pk) on a node: shoal uses provider records only, and a value
// PUT is a write to disk, outside the cache budget, that anyone could make.
func TestDHTStoresNoValues(t *testing.T) {
	dir := t.TempDir()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{
		Identity: key, Listen: []string{"/ip4/127.0.0.1/tcp/0"},
		Backend: &memBackend{manifests: map[[32]byte][]byte{}}, Log: slog.New(slog.DiscardHandler),
		DHT: &DHTConfig{RecordFile: filepath.Join(dir, "records.db"), AnnounceFile: filepath.Join(dir, "announced")},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	h := rawHost(t)
	kad, err := dht.New(h, dht.Mode(dht.ModeClient), dht.ProtocolPrefix(DHTProtocolPrefix), dht.BootstrapPeers(n.AddrInfo()))
	if err != nil {
		t.Fatal(err)
	}
	defer kad.Close()
	connect(t, h, n.AddrInfo())
	waitFor(t, 10*time.Second, "the node never entered the client's routing table", func() bool { return kad.RoutingTable().Size() > 0 })
	pub, err := crypto.MarshalPublicKey(h.Peerstore().PubKey(h.ID()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = kad.PutValue(ctx, "/pk/"+string(h.ID()), pub)

	res, err := n.dht.records.Query(context.Background(), dsq.Query{KeysOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := res.Rest()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("the node stored %d records for a stranger's value PUT", len(entries))
	}
}

// TestPeerRequestRateIsBounded has a bare host without the fleet key send "have"
// requests back to back: past its allowance, the node refuses them unread.
func TestPeerRequestRateIsBounded(t *testing.T) {
	const burst = 50
	n := lanNode(t, &chunkBackend{}, func(c *Config) { c.RequestRate, c.RequestBurst = 0.01, burst })
	h := rawHost(t)
	connect(t, h, n.AddrInfo())
	req := hashes(sha256.Sum256([]byte("x")))
	refused := 0
	for range 2 * burst {
		if out, err := exchange(t, h, n.ID(), ProtoHave, req); err != nil || len(out) != 1 {
			refused++
		}
	}
	if refused == 0 {
		t.Errorf("%d requests at once were all served", 2*burst)
	}
}
