package p2p

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/manifest"
)

// releases makes consecutive releases of a synthetic package, like compiled binaries:
// the first is compressible bytes (tokens from a small table); each next one rewrites a
// 4-byte field every KiB (shifted addresses) and inserts a few bytes every 128 KiB
// (moved chunk boundaries), so most of its chunks are new to the store, yet close to
// the previous release's chunks at the same place.
func releases(t testing.TB, seed uint64, size, n int) []*nar {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed))
	tokens := make([][8]byte, 1024)
	for i := range tokens {
		for j := range tokens[i] {
			tokens[i][j] = byte(r.UintN(256))
		}
	}
	data := make([]byte, 0, size)
	for len(data) < size {
		tok := tokens[r.UintN(uint(len(tokens)))]
		data = append(data, tok[:]...)
	}
	out := []*nar{narOf(t, data)}
	for len(out) < n {
		next := make([]byte, 0, len(data)+len(data)/1024)
		for off := 0; off < len(data); off += 1024 {
			block := bytes.Clone(data[off:min(off+1024, len(data))])
			if len(block) >= 4 {
				for j := range 4 {
					block[j] = byte(r.UintN(256))
				}
			}
			next = append(next, block...)
			if off%(128<<10) == 0 {
				for range 13 {
					next = append(next, byte(r.UintN(256)))
				}
			}
		}
		data = next
		out = append(out, narOf(t, data))
	}
	return out
}

// newChunks returns the indexes of to's entries that from doesn't have.
func newChunks(from, to *nar) []int {
	var out []int
	for i, e := range to.m.Entries {
		if _, ok := from.objs[e.ID]; !ok {
			out = append(out, i)
		}
	}
	return out
}

// basesFor picks, for entry i of to, the chunks of from around the same relative NAR
// offset: the one containing it and its neighbours, as publishing does.
func basesFor(from, to *nar, i int) []chunk.ID {
	var off uint64
	for _, e := range to.m.Entries[:i] {
		off += uint64(e.Size)
	}
	rel := off * from.m.NarSize / to.m.NarSize
	j, at := 0, uint64(0)
	for j < len(from.m.Entries)-1 && at+uint64(from.m.Entries[j].Size) <= rel {
		at += uint64(from.m.Entries[j].Size)
		j++
	}
	var bases []chunk.ID
	for k := max(j-1, 0); k <= min(j+1, len(from.m.Entries)-1); k++ {
		bases = append(bases, from.m.Entries[k].ID)
	}
	return bases
}

// dictOf concatenates the raw bytes of bases, as the requester does to decode.
func dictOf(t testing.TB, bases []chunk.ID, from ...*nar) []byte {
	t.Helper()
	var dict []byte
next:
	for _, b := range bases {
		for _, x := range from {
			if raw, ok := x.chunk[b]; ok {
				dict = append(dict, raw...)
				continue next
			}
		}
		t.Fatalf("base %s is in none of the NARs", b)
	}
	return dict
}

// syncBackend is a chunkBackend that tests may change while the node serves it.
type syncBackend struct {
	mu        sync.Mutex
	manifests map[[32]byte][]byte
	objs      map[chunk.ID][]byte
}

// backendOf holds every chunk of held, and verified the NARs in verified.
func backendOf(verified []*nar, held ...*nar) *syncBackend {
	b := &syncBackend{manifests: map[[32]byte][]byte{}, objs: map[chunk.ID][]byte{}}
	for _, x := range verified {
		b.manifests[x.m.NarHash] = x.raw
	}
	for _, x := range held {
		for id, o := range x.objs {
			b.objs[id] = o
		}
	}
	return b
}

func (b *syncBackend) NarInfo(string) ([]byte, bool) { return nil, false }
func (b *syncBackend) VerifiedManifest(h [32]byte) ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.manifests[h]
	return v, ok
}
func (b *syncBackend) Chunk(_ context.Context, id chunk.ID) ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if o, ok := b.objs[id]; ok {
		return o, nil
	}
	return nil, errors.New("chunk not held")
}

func (b *syncBackend) lose(id chunk.ID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.objs, id)
}

// upgrade is the manifest a requester holds for the new release: it names the old
// one as the NAR its delta bases come from.
func upgrade(from, to *nar) *manifest.Manifest {
	m := *to.m
	m.BaseNarHash = from.m.NarHash
	return &m
}

// deltaSourceFor returns n's offer for m as the fetcher sees it, to ask for deltas
// and to report bad ones.
func deltaSourceFor(t *testing.T, ctx context.Context, n *Node, m *manifest.Manifest) (fetch.Offer, fetch.Offer) {
	t.Helper()
	src, covers := n.ForNar(ctx, m)
	if !covers {
		t.Fatal("no peer holds the NAR")
	}
	return src, src
}

// TestPeerServesDelta has a peer holding releases 1 and 2 answer deltas of release 2's
// new chunks against release 1's chunks at the same place: each decodes to its chunk,
// is smaller than the chunk's object, and is counted; asking again is a cache hit, not
// a second encode. Once the NAR's time is up, the source asks nothing more.
func TestPeerServesDelta(t *testing.T) {
	rs := releases(t, 61, 1<<20, 2)
	v1, v2 := rs[0], rs[1]
	server := lanNode(t, backendOf([]*nar{v1, v2}, v1, v2), nil)
	n := lanNode(t, &chunkBackend{}, nil)
	introduce(t, n, server.AddrInfo())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, _ := deltaSourceFor(t, ctx, n, upgrade(v1, v2))
	dc := chunk.NewDeltaCodec(0, 1)
	defer dc.Close()

	targets := newChunks(v1, v2)
	if len(targets) < 4 {
		t.Fatalf("release 2 has %d new chunks, want at least 4", len(targets))
	}
	targets = targets[:4]
	var deltaBytes, objBytes int64
	var first []byte
	for _, i := range targets {
		e := v2.m.Entries[i]
		bases := basesFor(v1, v2, i)
		body, err := src.Delta(ctx, e.ID, bases)
		if err != nil {
			t.Fatalf("delta for entry %d: %v", i, err)
		}
		if first == nil {
			first = body
		}
		raw, err := dc.OpenDelta(nil, e.ID, body, dictOf(t, bases, v1), int(e.Size))
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if !bytes.Equal(raw, v2.chunk[e.ID]) {
			t.Fatalf("entry %d: the delta decodes to other bytes", i)
		}
		if len(body) >= len(v2.objs[e.ID]) {
			t.Fatalf("entry %d: delta of %d bytes, chunk object %d", i, len(body), len(v2.objs[e.ID]))
		}
		deltaBytes += int64(len(body))
		objBytes += int64(len(v2.objs[e.ID]))
	}
	s := server.Stats()
	if s.DeltasComputed != 4 || s.ServedDeltas != 4 || s.ServedDeltaBytes != deltaBytes || s.DeltaCacheHits != 0 {
		t.Fatalf("server stats %+v, want 4 computed and served, %d bytes, no cache hit", s, deltaBytes)
	}
	if got := n.Stats().FetchedBytes; got != deltaBytes {
		t.Fatalf("asker counted %d fetched bytes, want %d", got, deltaBytes)
	}

	e := v2.m.Entries[targets[0]]
	again, err := src.Delta(ctx, e.ID, basesFor(v1, v2, targets[0]))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, first) {
		t.Fatal("the repeated delta differs from the first")
	}
	s = server.Stats()
	if s.DeltaCacheHits != 1 || s.DeltasComputed != 4 || s.ServedDeltas != 5 {
		t.Fatalf("after a repeat: %+v, want 1 cache hit, still 4 computed, 5 served", s)
	}
	t.Logf("4 deltas: %d bytes against %d bytes of chunk objects (%.1f%%)", deltaBytes, objBytes, 100*float64(deltaBytes)/float64(objBytes))

	// Once the NAR's time with the peers is up (here: the assembly it was for ended),
	// the source sends nothing more and says so as "not found".
	narCtx, endNar := context.WithCancel(ctx)
	late, _ := deltaSourceFor(t, narCtx, n, upgrade(v1, v2))
	endNar()
	if _, err := late.Delta(ctx, e.ID, basesFor(v1, v2, targets[0])); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("delta after the NAR's time: %v, want not found", err)
	}
	if got := server.Stats().ServedDeltas; got != 5 {
		t.Fatalf("%d deltas served, want still 5", got)
	}
}

// TestDeltaPrivacyRule asks a node by hand for deltas: it answers only when the
// target is listed by the verified NAR asked about and every base by it or by the
// verified base NAR named, and it holds them all. Bases it holds for a NAR it never
// verified are refused, even when they would make a good delta, and a cached delta is
// no way around the rule.
func TestDeltaPrivacyRule(t *testing.T) {
	rs := releases(t, 71, 2<<20, 3)
	// Release 1 is held but never verified here; 2 and 3 are verified.
	v1, v2, v3 := rs[0], rs[1], rs[2]
	b := backendOf([]*nar{v2, v3}, v1, v2, v3)
	n := lanNode(t, b, nil)
	cl := rawHost(t)
	connect(t, cl, n.AddrInfo())

	// Targets four entries apart, so that no two share a base.
	targets := newChunks(v2, v3)
	if len(targets) < 17 {
		t.Fatalf("release 3 has %d new chunks, want at least 17", len(targets))
	}
	target := func(k int) chunk.ID { return v3.m.Entries[targets[4*k]].ID }
	basesIn := func(from *nar, k int) []chunk.ID { return basesFor(from, v3, targets[4*k]) }
	lostBase := basesIn(v2, 3)[1]
	b.lose(lostBase)
	b.lose(target(4))
	mixed := append(basesIn(v2, 2), v3.m.Entries[0].ID)

	var none [32]byte
	tests := []struct {
		name      string
		nar, base [32]byte
		target    chunk.ID
		bases     []chunk.ID
		from      []*nar // to decode; nil: want "not found"
	}{
		{"bases of the verified base NAR", v3.m.NarHash, v2.m.NarHash, target(0), basesIn(v2, 0), []*nar{v2}},
		{"bases of the base NAR and of the NAR itself", v3.m.NarHash, v2.m.NarHash, target(2), mixed, []*nar{v2, v3}},
		{"the cached delta, its bases' NAR not named", v3.m.NarHash, none, target(0), basesIn(v2, 0), nil},
		{"the cached delta, an unverified base NAR named", v3.m.NarHash, v1.m.NarHash, target(0), basesIn(v2, 0), nil},
		{"held bases of a NAR never verified", v3.m.NarHash, v1.m.NarHash, target(1), basesIn(v1, 1), nil},
		{"held bases of a NAR never verified, a verified base NAR named", v3.m.NarHash, v2.m.NarHash, target(1), basesIn(v1, 1), nil},
		{"target not listed by the NAR asked about", v2.m.NarHash, v2.m.NarHash, target(1), basesIn(v2, 1), nil},
		{"NAR asked about never verified", v1.m.NarHash, v2.m.NarHash, v1.m.Entries[1].ID, []chunk.ID{v2.m.Entries[1].ID}, nil},
		{"a base no longer held", v3.m.NarHash, v2.m.NarHash, target(3), basesIn(v2, 3), nil},
		{"target no longer held", v3.m.NarHash, v2.m.NarHash, target(4), basesIn(v2, 4), nil},
	}
	dc := chunk.NewDeltaCodec(0, 1)
	defer dc.Close()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := (&deltaRequest{nar: tc.nar, baseNar: tc.base, target: tc.target, bases: tc.bases}).append(nil)
			got, err := exchange(t, cl, n.ID(), ProtoDelta, req)
			if err != nil {
				t.Fatalf("stream ended with %v", err)
			}
			if tc.from == nil {
				if !bytes.Equal(got, []byte{statusNotFound}) {
					t.Fatalf("answer %x..., want not found", got[:min(16, len(got))])
				}
				return
			}
			if len(got) == 0 || got[0] != statusFound {
				t.Fatalf("answer %x..., want a delta", got[:min(16, len(got))])
			}
			body, err := readFrame(bufioOf(got[1:]), nil, maxDeltaObject)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := dc.OpenDelta(nil, tc.target, body, dictOf(t, tc.bases, tc.from...), chunk.MaxDeltaChunk)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(raw, v3.chunk[tc.target]) {
				t.Fatal("the delta decodes to other bytes")
			}
		})
	}
	if s := n.Stats(); s.DeltasComputed != 2 || s.ServedDeltas != 2 || s.DeltaCacheHits != 0 {
		t.Fatalf("stats %+v, want exactly the two allowed deltas computed and served, no cache hit", s)
	}

	// Once the base NAR is no longer verified (evicted, say), neither the cached delta
	// nor the node's index of that manifest lets its chunks serve as bases.
	b.mu.Lock()
	delete(b.manifests, v2.m.NarHash)
	b.mu.Unlock()
	req := (&deltaRequest{nar: v3.m.NarHash, baseNar: v2.m.NarHash, target: target(0), bases: basesIn(v2, 0)}).append(nil)
	got, err := exchange(t, cl, n.ID(), ProtoDelta, req)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, []byte{statusNotFound}) {
		t.Fatalf("answer %x... once the base NAR is unverified, want not found", got[:min(16, len(got))])
	}
}

// TestDeltaBusyIsNotAQueue holds the node's only encoder, as a long encode would, and
// sends more requests at once than it has encoders: each is answered "busy" (which the
// asker takes as "not found" and falls back on the chunk) rather than waiting, the
// peer is not dropped for it, and nothing is encoded meanwhile. A delta already
// cached is served while busy; once the encoder is free, the others are computed.
func TestDeltaBusyIsNotAQueue(t *testing.T) {
	rs := releases(t, 81, 1<<20, 2)
	v1, v2 := rs[0], rs[1]
	server := lanNode(t, backendOf([]*nar{v1, v2}, v1, v2), func(c *Config) {
		c.DeltaEncoders = 1
		// A queued request would outwait the test rather than time out.
		c.StreamTimeout = time.Minute
	})
	n := lanNode(t, &chunkBackend{}, func(c *Config) { c.StreamTimeout = time.Minute })
	introduce(t, n, server.AddrInfo())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, _ := deltaSourceFor(t, ctx, n, upgrade(v1, v2))

	targets := newChunks(v1, v2)
	const waiting = 6
	if len(targets) < waiting+1 {
		t.Fatalf("release 2 has %d new chunks, want at least %d", len(targets), waiting+1)
	}
	ask := func(i int) ([]byte, error) {
		return src.Delta(ctx, v2.m.Entries[i].ID, basesFor(v1, v2, i))
	}
	cached := targets[waiting]
	if _, err := ask(cached); err != nil {
		t.Fatal(err)
	}

	server.deltaSem <- struct{}{} // the encoder is taken
	errs := make([]error, waiting)
	var wg sync.WaitGroup
	for k := range waiting {
		wg.Go(func() { _, errs[k] = ask(targets[k]) })
	}
	wg.Wait()
	for k, err := range errs {
		if !errors.Is(err, shoal.ErrNotFound) || !errors.Is(err, errPeerBusy) {
			t.Fatalf("request %d while busy: %v, want busy (as not found)", k, err)
		}
	}
	if _, err := ask(cached); err != nil {
		t.Fatalf("cached delta while busy: %v", err)
	}
	s := server.Stats()
	if s.DeltaBusy != waiting || s.DeltasComputed != 1 || s.DeltaCacheHits != 1 {
		t.Fatalf("while busy: %+v, want %d busy, 1 computed, 1 cache hit", s, waiting)
	}
	if n.blocks.blocked(server.ID()) {
		t.Fatal("a busy peer was dropped")
	}

	<-server.deltaSem
	server.freeEncoders() // as after a quiet spell: new encoders are made as needed
	for k := range waiting {
		if _, err := ask(targets[k]); err != nil {
			t.Fatalf("request %d once free: %v", k, err)
		}
	}
	if s := server.Stats(); s.DeltasComputed != 1+waiting {
		t.Fatalf("once free: %d computed, want %d", s.DeltasComputed, 1+waiting)
	}
}

// TestLyingPeerDeltaIsReported puts a peer that answers every delta request with a
// well-formed delta of another chunk beside an honest one. The asker passes it on (it
// checks only framing); the caller's check fails, and reporting it, under the chunk's
// ID or the delta's, drops the liar. The next requests go to the honest peer.
func TestLyingPeerDeltaIsReported(t *testing.T) {
	rs := releases(t, 91, 1<<20, 2)
	v1, v2 := rs[0], rs[1]
	targets := newChunks(v1, v2)
	dc := chunk.NewDeltaCodec(0, 1)
	defer dc.Close()
	// A real delta, of the wrong chunk.
	wrongBases := basesFor(v1, v2, targets[1])
	lie, err := dc.EncodeDelta(nil, v2.chunk[v2.m.Entries[targets[1]].ID], dictOf(t, wrongBases, v1))
	if err != nil {
		t.Fatal(err)
	}

	for _, byDeltaID := range []bool{false, true} {
		name := map[bool]string{false: "reported under the chunk ID", true: "reported under the delta ID"}[byDeltaID]
		t.Run(name, func(t *testing.T) {
			honest := lanNode(t, backendOf([]*nar{v1, v2}, v1, v2), nil)
			n := lanNode(t, &chunkBackend{}, nil)
			liar := rawHost(t)
			fakeAnswers(liar, ProtoHave, []byte{1}, false)
			fakeAnswers(liar, ProtoDelta, cat([]byte{statusFound}, uvarint(uint64(len(lie))), lie), false)
			introduce(t, n, honest.AddrInfo())
			introduce(t, n, peer.AddrInfo{ID: liar.ID(), Addrs: liar.Addrs()})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			src, rep := deltaSourceFor(t, ctx, n, upgrade(v1, v2))

			i := targets[0]
			e := v2.m.Entries[i]
			bases := basesFor(v1, v2, i)
			dict := dictOf(t, bases, v1)
			lies := 0
			// Peers are taken in turn: within two requests one goes to the liar.
			for try := 0; try < 2 && lies == 0; try++ {
				body, err := src.Delta(ctx, e.ID, bases)
				if err != nil {
					t.Fatal(err)
				}
				// The lie decodes to another chunk, so its size or its content is wrong.
				if _, err := dc.OpenDelta(nil, e.ID, body, dict, int(e.Size)); err != nil {
					lies++
					id := e.ID
					if byDeltaID {
						id = chunk.DeltaID(e.ID, bases)
					}
					rep.Reject(id, err)
				}
			}
			if lies != 1 {
				t.Fatal("no request reached the lying peer")
			}
			if !n.blocks.blocked(liar.ID()) {
				t.Fatal("the lying peer was not dropped")
			}
			if n.blocks.blocked(honest.ID()) {
				t.Fatal("the honest peer was dropped")
			}
			for range 3 {
				body, err := src.Delta(ctx, e.ID, bases)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := dc.OpenDelta(nil, e.ID, body, dict, int(e.Size)); err != nil {
					t.Fatalf("after the liar was dropped: %v", err)
				}
			}
		})
	}
}

// TestDeltaFromPeerWithoutDeltas asks a peer that serves no deltas (an older shoal,
// or one with delta serving off): the answer is "not found", and the peer stays.
func TestDeltaFromPeerWithoutDeltas(t *testing.T) {
	rs := releases(t, 101, 512<<10, 2)
	v1, v2 := rs[0], rs[1]
	server := lanNode(t, backendOf([]*nar{v1, v2}, v1, v2), func(c *Config) { c.DeltaEncoders = -1 })
	n := lanNode(t, &chunkBackend{}, nil)
	introduce(t, n, server.AddrInfo())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, _ := deltaSourceFor(t, ctx, n, upgrade(v1, v2))
	i := newChunks(v1, v2)[0]
	_, err := src.Delta(ctx, v2.m.Entries[i].ID, basesFor(v1, v2, i))
	if !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("delta from a peer serving none: %v, want not found", err)
	}
	if n.blocks.blocked(server.ID()) {
		t.Fatalf("a peer without deltas was dropped (%v)", err)
	}
	// Its chunks are still there for the asking.
	if _, err := src.Chunk(ctx, v2.m.Entries[i]); err != nil {
		t.Fatalf("chunk from the same peer: %v", err)
	}
}

func TestDeltaCacheEvictsLeastRecentlyUsed(t *testing.T) {
	id := func(b byte) chunk.ID { return chunk.ID{b} }
	body := func(n int) []byte { return make([]byte, n) }
	tests := []struct {
		name  string
		limit int64
		ops   func(c *deltaCache)
		held  []byte // IDs (by first byte) still cached
		gone  []byte
	}{
		{"oldest out first", 3 * (100 + deltaEntryOverhead), func(c *deltaCache) {
			c.put(id(1), body(100))
			c.put(id(2), body(100))
			c.put(id(3), body(100))
			c.put(id(4), body(100))
		}, []byte{2, 3, 4}, []byte{1}},
		{"a hit keeps an entry", 3 * (100 + deltaEntryOverhead), func(c *deltaCache) {
			c.put(id(1), body(100))
			c.put(id(2), body(100))
			c.put(id(3), body(100))
			c.get(id(1))
			c.put(id(4), body(100))
		}, []byte{1, 3, 4}, []byte{2}},
		{"a large entry evicts several", 3 * (100 + deltaEntryOverhead), func(c *deltaCache) {
			c.put(id(1), body(100))
			c.put(id(2), body(100))
			c.put(id(3), body(100))
			c.put(id(4), body(250))
		}, []byte{3, 4}, []byte{1, 2}},
		{"an entry over the limit is not kept", 200, func(c *deltaCache) {
			c.put(id(1), body(10))
			c.put(id(2), body(1000))
		}, []byte{1}, []byte{2}},
		{"a negative entry is kept as such", 1000, func(c *deltaCache) {
			c.put(id(1), nil)
		}, []byte{1}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newDeltaCache(tc.limit)
			tc.ops(c)
			for _, b := range tc.held {
				if _, ok := c.get(id(b)); !ok {
					t.Errorf("entry %d was evicted", b)
				}
			}
			for _, b := range tc.gone {
				if _, ok := c.get(id(b)); ok {
					t.Errorf("entry %d is still cached", b)
				}
			}
			if _, size := c.stats(); size > tc.limit {
				t.Errorf("cache charges %d bytes, limit %d", size, tc.limit)
			}
		})
	}
}

func bufioOf(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }

// TestBusyPeerGivesWayToAnother has two peers hold both releases, one with its
// encoder taken: every delta still comes, from the free one, without waiting for the
// busy one, and neither peer is dropped.
func TestBusyPeerGivesWayToAnother(t *testing.T) {
	rs := releases(t, 121, 1<<20, 2)
	v1, v2 := rs[0], rs[1]
	busy := lanNode(t, backendOf([]*nar{v1, v2}, v1, v2), func(c *Config) { c.StreamTimeout = time.Minute })
	free := lanNode(t, backendOf([]*nar{v1, v2}, v1, v2), nil)
	n := lanNode(t, &chunkBackend{}, func(c *Config) { c.StreamTimeout = time.Minute })
	introduce(t, n, busy.AddrInfo())
	introduce(t, n, free.AddrInfo())
	busy.deltaSem <- struct{}{}
	t.Cleanup(func() { <-busy.deltaSem })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, _ := deltaSourceFor(t, ctx, n, upgrade(v1, v2))

	targets := newChunks(v1, v2)[:4]
	for _, i := range targets {
		if _, err := src.Delta(ctx, v2.m.Entries[i].ID, basesFor(v1, v2, i)); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
	if got := free.Stats().ServedDeltas; got != int64(len(targets)) {
		t.Fatalf("the free peer served %d deltas, want %d", got, len(targets))
	}
	// Peers are asked in turn, so about half the deltas went to the busy one first.
	if got := busy.Stats(); got.DeltaBusy == 0 || got.ServedDeltas != 0 {
		t.Fatalf("busy peer: %+v, want some busy answers and nothing served", got)
	}
	for _, p := range []*Node{busy, free} {
		if n.blocks.blocked(p.ID()) {
			t.Fatalf("peer %s was dropped", p.ID())
		}
	}
}

// TestManifestIndex checks the privacy check's index of verified manifests: it gives
// the sizes the manifest lists, reads a different manifest under the same NAR hash
// anew rather than trusting the old one, refuses garbage, and stays within its bound.
func TestManifestIndex(t *testing.T) {
	a, b := makeNAR(t, 131, 256<<10), makeNAR(t, 132, 256<<10)
	var x manifestIndex
	check := func(sizes map[chunk.ID]uint32, want *nar) {
		t.Helper()
		if len(sizes) != len(want.m.Entries) {
			t.Fatalf("%d sizes, want %d", len(sizes), len(want.m.Entries))
		}
		for _, e := range want.m.Entries {
			if sizes[e.ID] != e.Size {
				t.Fatalf("chunk %s: size %d, want %d", e.ID, sizes[e.ID], e.Size)
			}
		}
	}
	check(x.sizes(a.m.NarHash, a.raw), a)
	check(x.sizes(a.m.NarHash, a.raw), a)
	// The backend's manifest for the NAR changed: the index must follow it.
	check(x.sizes(a.m.NarHash, b.raw), b)
	if got := x.sizes(b.m.NarHash, []byte("not a manifest")); got != nil {
		t.Fatalf("garbage indexed as %d sizes", len(got))
	}
	for i := range manifestIndexSize + 4 {
		var h [32]byte
		h[0] = byte(i + 1)
		x.sizes(h, a.raw)
	}
	if len(x.byNar) != manifestIndexSize || len(x.order) != manifestIndexSize {
		t.Fatalf("index holds %d manifests (%d in order), want at most %d", len(x.byNar), len(x.order), manifestIndexSize)
	}
	if _, ok := x.byNar[a.m.NarHash]; ok {
		t.Fatal("the oldest manifest was not evicted")
	}
	var want int64
	for _, im := range x.byNar {
		want += im.cost()
	}
	if x.bytes != want {
		t.Fatalf("index charges %d bytes, its entries cost %d", x.bytes, want)
	}
}

// TestDeltaNoSmallerThanChunk asks for deltas between unrelated random chunks: each
// comes out no smaller than the chunk, so the node answers "not found" (the asker is
// better off with the chunk), and remembers that rather than encoding it again.
func TestDeltaNoSmallerThanChunk(t *testing.T) {
	a := makeNAR(t, 141, 512<<10)
	n := lanNode(t, backendOf([]*nar{a}, a), nil)
	cl := rawHost(t)
	connect(t, cl, n.AddrInfo())
	req := (&deltaRequest{nar: a.m.NarHash, target: a.m.Entries[1].ID, bases: []chunk.ID{a.m.Entries[0].ID}}).append(nil)
	for try := range 2 {
		got, err := exchange(t, cl, n.ID(), ProtoDelta, req)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, []byte{statusNotFound}) {
			t.Fatalf("try %d: answer %x..., want not found", try, got[:min(16, len(got))])
		}
	}
	if s := n.Stats(); s.DeltasComputed != 1 || s.DeltaCacheHits != 1 || s.ServedDeltas != 0 {
		t.Fatalf("stats %+v, want 1 computed, 1 cache hit, none served", s)
	}
}

// TestDeltaContention sends more delta requests at once than the node has encoders,
// with nothing held artificially: however they interleave, each is answered with a
// delta or "busy", never an error or a wait past the request, and the node's counters
// account for every one.
func TestDeltaContention(t *testing.T) {
	rs := releases(t, 151, 2<<20, 2)
	v1, v2 := rs[0], rs[1]
	server := lanNode(t, backendOf([]*nar{v1, v2}, v1, v2), func(c *Config) { c.DeltaEncoders = 1 })
	cl := rawHost(t)
	connect(t, cl, server.AddrInfo())
	targets := newChunks(v1, v2)
	if len(targets) < 16 {
		t.Fatalf("release 2 has %d new chunks, want at least 16", len(targets))
	}
	targets = targets[:16]
	answers := make([][]byte, len(targets))
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for k, i := range targets {
		req := (&deltaRequest{nar: v2.m.NarHash, baseNar: v1.m.NarHash, target: v2.m.Entries[i].ID, bases: basesFor(v1, v2, i)}).append(nil)
		wg.Go(func() { answers[k], errs[k] = tryExchange(cl, server.ID(), ProtoDelta, req) })
	}
	wg.Wait()
	var found, busy int64
	for k, got := range answers {
		switch {
		case errs[k] != nil:
			t.Fatalf("request %d: %v", k, errs[k])
		case bytes.Equal(got, []byte{statusBusy}):
			busy++
		case len(got) > 1 && got[0] == statusFound:
			found++
		default:
			t.Fatalf("request %d: answer %x..., want a delta or busy", k, got[:min(16, len(got))])
		}
	}
	s := server.Stats()
	if s.DeltasComputed != found || s.ServedDeltas != found || s.DeltaBusy != busy {
		t.Fatalf("stats %+v, want %d computed and served, %d busy", s, found, busy)
	}
	t.Logf("%d requests at once, 1 encoder: %d deltas, %d busy", len(targets), found, busy)
}
