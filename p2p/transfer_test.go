package p2p

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
)

// byteCounts records the assembler's bytes by source.
type byteCounts struct {
	mu sync.Mutex
	m  map[string]int64
}

func (c *byteCounts) Add(source string, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[source] += n
}

func (c *byteCounts) Event(string)         {}
func (c *byteCounts) Priced(fetch.Pricing) {}

func (c *byteCounts) get(source string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[source]
}

// storeWith returns a chunk store holding x's chunks and manifest.
func storeWith(t *testing.T, x *nar) *chunkstore.Store {
	t.Helper()
	b, err := blob.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	st := chunkstore.New(b)
	ctx := context.Background()
	for id, obj := range x.objs {
		if err := st.PutChunk(ctx, id, obj); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.PutManifest(ctx, x.m); err != nil {
		t.Fatal(err)
	}
	return st
}

// fetcherFor returns a fetcher over a fresh local cache whose sources are n's peers,
// then the store st, and its byte counts.
func fetcherFor(t *testing.T, n *Node, st *chunkstore.Store) (*fetch.Fetcher, *byteCounts) {
	t.Helper()
	cache, err := localcache.Open(filepath.Join(t.TempDir(), "cache.db"), localcache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(codec.Close)
	counts := &byteCounts{m: map[string]int64{}}
	f := &fetch.Fetcher{
		Cache: cache, Codec: codec, Params: chunk.DefaultParams(), Counters: counts,
		Sources: []fetch.Source{n, &fetch.StoreSource{Store: st}},
		Log:     slog.New(slog.DiscardHandler),
	}
	t.Cleanup(f.Close)
	return f, counts
}

// assembleVia makes x available through a fetcher whose sources are n's peers, then
// the store; it returns the bytes by source once the NAR assembled and verified, and
// checks the kept chunks read back as x.
func assembleVia(t *testing.T, n *Node, x *nar) *byteCounts {
	t.Helper()
	// The central store holds every chunk and the manifest, and comes after the peers.
	f, counts := fetcherFor(t, n, storeWith(t, x))
	cache, codec := f.Cache, f.Codec
	info := &nixcache.NarInfo{
		StorePath: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-test-1.0",
		NarHash:   x.m.NarHash, NarSize: x.m.NarSize,
	}
	// Far below NarBudget: a fetch that waited out the NAR's budget fails here.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := f.Start(fetch.Request{Info: info, KnownPackage: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release()
	if _, err := p.Wait(ctx); err != nil {
		t.Fatalf("assembling the NAR: %v", err)
	}
	var got []byte
	for _, e := range x.m.Entries {
		obj, err := cache.GetChunk(ctx, e.ID)
		if err != nil {
			t.Fatalf("chunk %s not kept: %v", e.ID, err)
		}
		if got, err = codec.Open(got, e.ID, obj, int(e.Size)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, x.data) {
		t.Fatal("the kept chunks don't read back as the NAR")
	}
	return counts
}

// TestStalledPeerGivesWayToStore has a fake peer say it holds the NAR, send the first
// chunks it is asked for, then stop halfway through the next object and hold the
// stream open. The asker must give up on the batch at BatchTimeout, drop the peer, and
// take the rest from the store; the NAR assembles and verifies well within NarBudget.
func TestStalledPeerGivesWayToStore(t *testing.T) {
	x := makeNAR(t, 31, 1<<20)
	const batchTimeout = 750 * time.Millisecond
	n := lanNode(t, &chunkBackend{}, func(c *Config) {
		c.BatchTimeout, c.HaveTimeout, c.NarBudget = batchTimeout, 5*time.Second, time.Minute
	})
	f := rawHost(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // runs before the host closes
	fakeAnswers(f, ProtoHave, []byte{1}, false)
	var sent atomic.Int32
	stalled := make(chan time.Time, 64)
	f.SetStreamHandler(ProtoChunks, func(s network.Stream) {
		defer s.Reset()
		r := bufio.NewReader(s)
		var narHash [32]byte
		if _, err := io.ReadFull(r, narHash[:]); err != nil {
			return
		}
		ids, err := readHashes(r, MaxBatch)
		if err != nil {
			return
		}
		w := bufio.NewWriter(s)
		for _, id := range ids {
			obj := x.objs[chunk.ID(id)]
			if sent.Add(1) <= 2 {
				if writeAnswer(w, obj, true) != nil {
					return
				}
				continue
			}
			// Half an object, then nothing: the stream stays open.
			_ = w.WriteByte(statusFound)
			_, _ = w.Write(binary.AppendUvarint(nil, uint64(len(obj))))
			_, _ = w.Write(obj[:len(obj)/2])
			break
		}
		_ = w.Flush()
		stalled <- time.Now()
		<-release
	})
	introduce(t, n, peer.AddrInfo{ID: f.ID(), Addrs: f.Addrs()})

	began := time.Now()
	counts := assembleVia(t, n, x)
	took := time.Since(began)
	if len(stalled) == 0 {
		t.Fatal("the fake peer never stalled")
	}
	if counts.get(SourceName) == 0 {
		t.Fatal("no bytes came from the peer before it stalled")
	}
	if counts.get("store") == 0 {
		t.Fatal("nothing came from the store after the peer stalled")
	}
	if !n.blocks.blocked(f.ID()) {
		t.Fatal("the stalled peer was not dropped")
	}
	for _, p := range n.Peers() {
		if p == f.ID() {
			t.Fatal("the stalled peer is still among the peers")
		}
	}
	t.Logf("NAR of %d chunks assembled in %v with a %v batch deadline: %d bytes from the peer, %d from the store",
		len(x.m.Entries), took, batchTimeout, counts.get(SourceName), counts.get("store"))
}

// TestPeerLackingAChunk has a peer that verified the NAR but lost one of its chunks:
// it answers that chunk "not found", the store supplies exactly that chunk, the peer
// supplies the rest and stays a peer, since lacking a chunk is no misbehaviour.
func TestPeerLackingAChunk(t *testing.T) {
	x := makeNAR(t, 41, 1<<20)
	lost := x.m.Entries[len(x.m.Entries)/2].ID
	held := map[chunk.ID][]byte{}
	var heldBytes int64
	for id, o := range x.objs {
		if id != lost {
			held[id] = o
			heldBytes += int64(len(o))
		}
	}
	server := lanNode(t, &chunkBackend{manifests: map[[32]byte][]byte{x.m.NarHash: x.raw}, objs: held}, nil)
	n := lanNode(t, &chunkBackend{}, func(c *Config) { c.BatchTimeout = 5 * time.Second })
	introduce(t, n, server.AddrInfo())

	counts := assembleVia(t, n, x)
	if got, want := counts.get("store"), int64(len(x.objs[lost])); got != want {
		t.Fatalf("store supplied %d bytes, want %d (the lost chunk only)", got, want)
	}
	if got := counts.get(SourceName); got != heldBytes {
		t.Fatalf("peer supplied %d bytes, want %d (every other chunk)", got, heldBytes)
	}
	if n.blocks.blocked(server.ID()) {
		t.Fatal("a peer lacking a chunk was dropped")
	}
	if s := server.Stats(); s.ServedBytes != heldBytes {
		t.Fatalf("server counted %d bytes served, want %d", s.ServedBytes, heldBytes)
	}
}

// TestFrozenPeerDoesNotHoldUpQuestions puts a peer that reads questions and never
// answers beside one that answers: a manifest comes from the answering peer without
// waiting for the frozen one, and the "have" round ends at HaveTimeout with the
// answering peer only, long before the frozen stream's own deadline.
func TestFrozenPeerDoesNotHoldUpQuestions(t *testing.T) {
	x := makeNAR(t, 51, 512<<10)
	good := lanNode(t, &chunkBackend{manifests: map[[32]byte][]byte{x.m.NarHash: x.raw}, objs: x.objs}, nil)
	n := lanNode(t, &chunkBackend{}, func(c *Config) {
		c.StreamTimeout, c.HaveTimeout = time.Minute, 500*time.Millisecond
	})
	frozen := rawHost(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	for _, p := range []protocol.ID{ProtoHave, ProtoManifest} {
		frozen.SetStreamHandler(p, func(s network.Stream) {
			defer s.Reset()
			_, _ = io.ReadAll(s)
			<-release
		})
	}
	introduce(t, n, good.AddrInfo())
	introduce(t, n, peer.AddrInfo{ID: frozen.ID(), Addrs: frozen.Addrs()})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, _, err := n.askManifest(ctx, x.m.NarHash, func([]byte) error { return nil })
	if err != nil {
		t.Fatalf("manifest: %v", err)
	}
	if !bytes.Equal(raw, x.raw) {
		t.Fatal("manifest differs from the one the answering peer holds")
	}
	havers := n.Have(ctx, x.m.NarHash)
	if ctx.Err() != nil {
		t.Fatal("the have round waited for the frozen peer past HaveTimeout")
	}
	if len(havers) != 1 || havers[0] != good.ID() {
		t.Fatalf("havers %v, want only %s", havers, good.ID())
	}
}

// TestStrangerWithMadeUpManifest has a peer the node found (on the LAN, without a
// fleet key) answer "have" for a NAR and serve a
// made-up manifest of the right NarHash and NarSize, whose chunks it holds (so each
// passes its ID check) but which do not make up the NAR. When the chunk store has the
// NAR's manifest, the stranger's is never asked for; when only the stranger has one,
// assembling from it fails, the stranger is dropped, none of its chunks stay in the
// cache, and the NAR comes whole from the upstream.
func TestStrangerWithMadeUpManifest(t *testing.T) {
	x := makeNAR(t, 51, 600_000)
	junk := makeNAR(t, 52, 600_000)
	lie := *junk.m
	lie.NarHash, lie.NarSize = x.m.NarHash, x.m.NarSize
	lieRaw, err := lie.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	up := cachetest.New(t, "stranger-1")
	ni := up.Add(t, cachetest.HashPart("stranger"), "demo-1.0", x.data, "zstd")
	upBlob, err := blob.Open(up.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	upstream := nixcache.NewBinaryCache(upBlob)
	for _, storeHasManifest := range []bool{true, false} {
		t.Run(fmt.Sprintf("store manifest %v", storeHasManifest), func(t *testing.T) {
			stranger := lanNode(t, &chunkBackend{manifests: map[[32]byte][]byte{x.m.NarHash: lieRaw}, objs: junk.objs}, nil)
			n := lanNode(t, &chunkBackend{}, nil)
			// Found the way mDNS or the DHT would find it: a stranger that merely
			// connects is never asked.
			introduce(t, n, stranger.AddrInfo())
			st := storeWith(t, x)
			if !storeHasManifest {
				if err := st.Backend().Delete(context.Background(), chunkstore.ManifestKey(manifest.Key(x.m.NarHash))); err != nil {
					t.Fatal(err)
				}
			}
			f, counts := fetcherFor(t, n, st)
			f.Upstream = fetch.Upstream{Caches: []*nixcache.BinaryCache{upstream}}
			cache := f.Cache
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			p, err := f.Start(fetch.Request{Info: ni, From: upstream.String(), KnownPackage: true})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Release()
			m, err := p.Wait(ctx)
			if err != nil {
				t.Fatalf("fetching the NAR: %v", err)
			}
			got, err := io.ReadAll(f.NewReader(ctx, m))
			if err != nil || !bytes.Equal(got, x.data) {
				t.Fatalf("the NAR read back differs (%v)", err)
			}
			dropped := n.blocks.blocked(stranger.ID())
			fromUpstream := counts.get("upstream") > 0
			if storeHasManifest && (dropped || fromUpstream || counts.get(SourceName+"-manifest") > 0) {
				t.Errorf("with the store's manifest: stranger dropped %v, whole NAR %v, peer manifest bytes %d; want none of them",
					dropped, fromUpstream, counts.get(SourceName+"-manifest"))
			}
			if !storeHasManifest && (!dropped || !fromUpstream) {
				t.Errorf("with only the stranger's manifest: stranger dropped %v, whole NAR %v; want both", dropped, fromUpstream)
			}
			var junkIDs []chunk.ID
			for id := range junk.objs {
				junkIDs = append(junkIDs, id)
			}
			held, err := cache.HasChunks(junkIDs)
			if err != nil {
				t.Fatal(err)
			}
			for i, h := range held {
				if h {
					t.Errorf("the stranger's chunk %s stayed in the cache", junkIDs[i])
				}
			}
		})
	}
}
