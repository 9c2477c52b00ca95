package p2p

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
)

// nar is a synthetic NAR cut into chunks: its bytes, manifest, stored objects and the
// chunks' raw bytes.
type nar struct {
	data  []byte
	m     *manifest.Manifest
	raw   []byte
	objs  map[chunk.ID][]byte
	chunk map[chunk.ID][]byte
}

// makeNAR cuts size pseudo-random bytes (seeded, so runs repeat) with the default
// chunker; the contents need not be a real NAR, only hash to the manifest's NarHash.
func makeNAR(t testing.TB, seed uint64, size int) *nar {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed))
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(r.UintN(256))
	}
	return narOf(t, data)
}

// narOf cuts data with the default chunker into a nar.
func narOf(t testing.TB, data []byte) *nar {
	t.Helper()
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	n := &nar{data: data, objs: map[chunk.ID][]byte{}, chunk: map[chunk.ID][]byte{}}
	n.m, err = manifest.Build(context.Background(), bytes.NewReader(data), chunk.DefaultParams(),
		func(id chunk.ID, raw []byte) (int, error) {
			obj := codec.Encode(nil, raw)
			n.objs[id] = obj
			n.chunk[id] = bytes.Clone(raw)
			return len(obj), nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if n.raw, err = n.m.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	if len(n.m.Entries) < 4 {
		t.Fatalf("want a NAR of several chunks, got %d", len(n.m.Entries))
	}
	return n
}

// chunkBackend is a daemon's cache as a node serves it: verified manifests, and chunk
// objects held whether or not a verified NAR lists them.
type chunkBackend struct {
	narinfos  map[string][]byte
	manifests map[[32]byte][]byte
	objs      map[chunk.ID][]byte
}

func (b *chunkBackend) NarInfo(h string) ([]byte, bool) { v, ok := b.narinfos[h]; return v, ok }
func (b *chunkBackend) VerifiedManifest(h [32]byte) ([]byte, bool) {
	v, ok := b.manifests[h]
	return v, ok
}
func (b *chunkBackend) Chunk(_ context.Context, id chunk.ID) ([]byte, error) {
	if o, ok := b.objs[id]; ok {
		return o, nil
	}
	return nil, errors.New("chunk not held")
}

// lanNode starts a node on loopback without discovery or DHT; peers are joined by hand.
func lanNode(t testing.TB, b Backend, tune func(*Config)) *Node {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Identity: key, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Backend: b, Log: slog.New(slog.DiscardHandler)}
	if tune != nil {
		tune(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// rawHost is a bare libp2p host, to speak shoal's protocols by hand: as a client that
// sends bad requests, or as a peer that answers badly.
func rawHost(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func connect(t testing.TB, h host.Host, to peer.AddrInfo) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Connect(ctx, to); err != nil {
		t.Fatal(err)
	}
}

// introduce has n find the peer at ai, as mDNS or a bootstrap list would: only
// peers a node found itself are asked about NARs.
func introduce(t testing.TB, n *Node, ai peer.AddrInfo) {
	t.Helper()
	if err := n.Connect(context.Background(), ai); err != nil {
		t.Fatal(err)
	}
}

// exchange sends req on a new stream, closes its side and reads until the stream ends:
// it returns what came back and the error that ended it (nil for a clean close).
func exchange(t testing.TB, h host.Host, to peer.ID, proto protocol.ID, req []byte) ([]byte, error) {
	t.Helper()
	out, err := tryExchange(h, to, proto, req)
	if errors.Is(err, errNoStream) {
		t.Fatal(err)
	}
	return out, err
}

var errNoStream = errors.New("no stream")

// tryExchange is exchange for goroutines other than the test's: a stream that can't
// be opened is an error wrapping errNoStream.
func tryExchange(h host.Host, to peer.ID, proto protocol.ID, req []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, to, proto)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoStream, err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Write(req); err != nil {
		return nil, err
	}
	// A reset that arrives while closing the write side comes back from CloseWrite as
	// the muxer's own error type rather than network.ErrReset; the read that follows
	// reports the same reset as network.ErrReset, so the error is left to it.
	_ = s.CloseWrite()
	out, err := io.ReadAll(s)
	return out, err
}

func hashes(hs ...[32]byte) []byte { return appendHashes(nil, hs) }

func uvarint(v uint64) []byte { return binary.AppendUvarint(nil, v) }

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// TestServerRefusesBadRequests sends each protocol requests that are truncated, have a
// count out of bounds, or announce more than the limit, and checks the node resets the
// stream without an answer; a well-formed request on the same node is answered and
// closed cleanly, so a reset is the refusal and not how every stream ends.
func TestServerRefusesBadRequests(t *testing.T) {
	a := makeNAR(t, 1, 512<<10)
	var hp [32]byte
	copy(hp[:], "0123456789abcdfghijklmnpqrsvwxyz")
	b := &chunkBackend{
		narinfos:  map[string][]byte{string(hp[:]): []byte("StorePath: x\n")},
		manifests: map[[32]byte][]byte{a.m.NarHash: a.raw},
		objs:      a.objs,
	}
	n := lanNode(t, b, nil)
	c := rawHost(t)
	connect(t, c, n.AddrInfo())

	many := make([][32]byte, MaxBatch+1)
	for i := range many {
		many[i] = a.m.Entries[i%len(a.m.Entries)].ID
	}
	var zero [32]byte
	tooManyHave := make([][32]byte, MaxHave+1)
	for i := range tooManyHave {
		tooManyHave[i] = a.m.NarHash
	}
	found := cat([]byte{statusFound}, uvarint(uint64(len(a.raw))), a.raw)
	objAnswer := func(i int) []byte {
		o := a.objs[a.m.Entries[i].ID]
		return cat([]byte{statusFound}, uvarint(uint64(len(o))), o)
	}
	tests := []struct {
		name  string
		proto protocol.ID
		req   []byte
		want  []byte // nil: the stream must be reset
	}{
		{"narinfo well-formed", ProtoNarInfo, hp[:], cat([]byte{statusFound}, uvarint(13), []byte("StorePath: x\n"))},
		{"narinfo truncated hash", ProtoNarInfo, hp[:20], nil},
		{"narinfo empty", ProtoNarInfo, nil, nil},
		{"manifest well-formed", ProtoManifest, a.m.NarHash[:], found},
		{"manifest truncated hash", ProtoManifest, a.m.NarHash[:31], nil},
		{"have well-formed", ProtoHave, hashes(a.m.NarHash, [32]byte{}), []byte{1, 0}},
		{"have zero count", ProtoHave, uvarint(0), nil},
		{"have over MaxHave", ProtoHave, appendHashes(nil, tooManyHave), nil},
		{"have count beyond any bound", ProtoHave, cat(uvarint(1<<62), a.m.NarHash[:]), nil},
		{"have fewer hashes than counted", ProtoHave, cat(uvarint(3), a.m.NarHash[:]), nil},
		{"have bad uvarint", ProtoHave, bytes.Repeat([]byte{0xff}, 11), nil},
		{"chunks well-formed", ProtoChunks, cat(a.m.NarHash[:], hashes(a.m.Entries[0].ID, a.m.Entries[1].ID)), cat(objAnswer(0), objAnswer(1))},
		{"chunks batch over MaxBatch", ProtoChunks, cat(a.m.NarHash[:], appendHashes(nil, many)), nil},
		{"chunks count beyond any bound", ProtoChunks, cat(a.m.NarHash[:], uvarint(1<<40)), nil},
		{"chunks truncated NAR hash", ProtoChunks, a.m.NarHash[:16], nil},
		{"chunks fewer IDs than counted", ProtoChunks, cat(a.m.NarHash[:], uvarint(2), a.m.Entries[0].ID[:]), nil},
		// Random chunks make no delta smaller than the chunk: answered "not found".
		{"delta well-formed", ProtoDelta, cat(a.m.NarHash[:], zero[:], a.m.Entries[1].ID[:], hashes(a.m.Entries[0].ID)), []byte{statusNotFound}},
		{"delta without bases", ProtoDelta, cat(a.m.NarHash[:], zero[:], a.m.Entries[1].ID[:], uvarint(0)), nil},
		{"delta over MaxDeltaBases", ProtoDelta, cat(a.m.NarHash[:], zero[:], a.m.Entries[1].ID[:], appendHashes(nil, many[:chunk.MaxDeltaBases+1])), nil},
		{"delta truncated target", ProtoDelta, cat(a.m.NarHash[:], zero[:], a.m.Entries[1].ID[:8]), nil},
		{"delta fewer bases than counted", ProtoDelta, cat(a.m.NarHash[:], zero[:], a.m.Entries[1].ID[:], uvarint(2), a.m.Entries[0].ID[:]), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := exchange(t, c, n.ID(), tc.proto, tc.req)
			if tc.want == nil {
				if !errors.Is(err, network.ErrReset) {
					t.Fatalf("stream ended with %v after %d bytes, want a reset", err, len(got))
				}
				if len(got) != 0 {
					t.Fatalf("got %d answer bytes before the reset, want none", len(got))
				}
				return
			}
			if err != nil {
				t.Fatalf("well-formed request: %v", err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("answer %d bytes %x..., want %d bytes %x...", len(got), got[:min(16, len(got))], len(tc.want), tc.want[:min(16, len(tc.want))])
			}
		})
	}
}

// TestServesOnlyVerifiedNARs checks the privacy rule: "have" and manifests only for
// NARs the node verified itself, and a chunk only when the verified manifest of the NAR
// asked about lists it. Chunks held for an unverified NAR, for another verified NAR, or
// for none, are not served; and no protocol lists what the node holds.
func TestServesOnlyVerifiedNARs(t *testing.T) {
	a, bn, c := makeNAR(t, 11, 512<<10), makeNAR(t, 12, 512<<10), makeNAR(t, 13, 512<<10)
	stray := []byte("a chunk no NAR lists")
	strayID := chunk.Sum(stray)
	objs := map[chunk.ID][]byte{strayID: stray}
	for _, x := range []*nar{a, bn, c} {
		for id, o := range x.objs {
			objs[id] = o
		}
	}
	// bn's chunks are all held, but bn was never verified here.
	b := &chunkBackend{manifests: map[[32]byte][]byte{a.m.NarHash: a.raw, c.m.NarHash: c.raw}, objs: objs}
	n := lanNode(t, b, nil)
	cl := rawHost(t)
	connect(t, cl, n.AddrInfo())

	id := func(x *nar, i int) [32]byte { return x.m.Entries[i].ID }
	answer := func(x *nar, i int) []byte {
		o := x.objs[x.m.Entries[i].ID]
		return cat([]byte{statusFound}, uvarint(uint64(len(o))), o)
	}
	nf := []byte{statusNotFound}
	var unknown [32]byte
	unknown[0] = 7
	tests := []struct {
		name  string
		proto protocol.ID
		req   []byte
		want  []byte
	}{
		{"have: verified yes, unverified and unknown no", ProtoHave, hashes(a.m.NarHash, bn.m.NarHash, c.m.NarHash, unknown), []byte{1, 0, 1, 0}},
		{"manifest of a verified NAR", ProtoManifest, a.m.NarHash[:], cat([]byte{statusFound}, uvarint(uint64(len(a.raw))), a.raw)},
		{"manifest of an unverified NAR whose chunks are held", ProtoManifest, bn.m.NarHash[:], nf},
		{"manifest of an unknown NAR", ProtoManifest, unknown[:], nf},
		{"chunks listed by the verified NAR asked about", ProtoChunks, cat(a.m.NarHash[:], hashes(id(a, 0), id(a, 2))), cat(answer(a, 0), answer(a, 2))},
		{"chunk of another verified NAR", ProtoChunks, cat(a.m.NarHash[:], hashes(id(a, 0), id(c, 0), id(a, 1))), cat(answer(a, 0), nf, answer(a, 1))},
		{"held chunk of an unverified NAR, asked under a verified one", ProtoChunks, cat(a.m.NarHash[:], hashes(id(bn, 0))), nf},
		{"held chunk of an unverified NAR, asked under it", ProtoChunks, cat(bn.m.NarHash[:], hashes(id(bn, 0), id(bn, 1))), cat(nf, nf)},
		{"held chunk no NAR lists", ProtoChunks, cat(a.m.NarHash[:], hashes(strayID)), nf},
		{"verified NAR's chunk asked under an unknown NAR", ProtoChunks, cat(unknown[:], hashes(id(a, 0))), nf},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := exchange(t, cl, n.ID(), tc.proto, tc.req)
			if err != nil {
				t.Fatalf("stream ended with %v", err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("answer %d bytes %x..., want %d bytes %x...", len(got), got[:min(16, len(got))], len(tc.want), tc.want[:min(16, len(tc.want))])
			}
		})
	}

	// Only the five question-and-answer protocols are offered under /shoal: none of
	// them enumerates, so there is no way to list a node's holdings.
	var offered []protocol.ID
	for _, p := range n.host.Mux().Protocols() {
		if strings.HasPrefix(string(p), "/shoal/") {
			offered = append(offered, p)
		}
	}
	slices.Sort(offered)
	want := []protocol.ID{ProtoChunks, ProtoDelta, ProtoHave, ProtoManifest, ProtoNarInfo}
	if !slices.Equal(offered, want) {
		t.Fatalf("node offers %v under /shoal, want only %v", offered, want)
	}
}

// flood is what a fake peer's answer came to: the bytes it managed to write and the
// error that stopped it.
type flood struct {
	written int
	err     error
}

// fakeAnswers makes h answer proto with prefix after reading the request; with endless
// it then writes filler until the stream breaks, and reports how that went.
func fakeAnswers(h host.Host, proto protocol.ID, prefix []byte, endless bool) <-chan flood {
	res := make(chan flood, 16)
	h.SetStreamHandler(proto, func(s network.Stream) {
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(s); err != nil {
			_ = s.Reset()
			return
		}
		w, err := s.Write(prefix)
		if !endless {
			_ = s.Close()
			return
		}
		filler := make([]byte, 32<<10)
		for err == nil {
			var k int
			k, err = s.Write(filler)
			w += k
		}
		_ = s.Reset()
		res <- flood{w, err}
	})
	return res
}

// TestClientRefusesBadAnswers has a fake peer answer each protocol with a frame over
// its bound (or one announcing an absurd length, then endless filler), an unknown
// status, or a truncated frame. The asker must refuse the answer, reset the stream
// rather than read on, and drop a peer that sent a bad chunk batch or delta.
func TestClientRefusesBadAnswers(t *testing.T) {
	a := makeNAR(t, 21, 512<<10)
	var hp [32]byte
	copy(hp[:], "0123456789abcdfghijklmnpqrsvwxyz")
	found := func(n uint64) []byte { return cat([]byte{statusFound}, uvarint(n)) }
	obj0 := a.objs[a.m.Entries[0].ID]
	askNarInfo := func(ctx context.Context, n *Node) error {
		_, err := n.NarInfo(ctx, string(hp[:]), func([]byte) error { return nil })
		return err
	}
	askManifest := func(ctx context.Context, n *Node) error {
		_, _, err := n.askManifest(ctx, a.m.NarHash, func([]byte) error { return nil })
		return err
	}
	askChunk := func(ctx context.Context, n *Node) error {
		src, covers := n.ForNar(ctx, a.m)
		if !covers {
			return errors.New("the fake peer's have went unheard")
		}
		_, err := src.chunk(ctx, a.m.Entries[0].ID)
		return err
	}
	askDelta := func(ctx context.Context, n *Node) error {
		src, covers := n.ForNar(ctx, a.m)
		if !covers {
			return errors.New("the fake peer's have went unheard")
		}
		_, err := src.Delta(ctx, a.m.Entries[0].ID, []chunk.ID{a.m.Entries[1].ID})
		return err
	}
	tests := []struct {
		name     string
		proto    protocol.ID
		answer   []byte
		endless  bool
		ask      func(context.Context, *Node) error
		wantErr  error  // errors.Is target, or nil to match wantText
		wantText string // in the error
		dropped  bool
	}{
		{"narinfo over MaxNarInfo", ProtoNarInfo, found(MaxNarInfo + 1), true, askNarInfo, errTooLarge, "", false},
		{"narinfo unknown status", ProtoNarInfo, []byte{9}, false, askNarInfo, nil, "unknown status 9", false},
		{"narinfo truncated", ProtoNarInfo, cat(found(100), []byte("StorePath")), false, askNarInfo, io.ErrUnexpectedEOF, "", false},
		{"manifest over MaxManifest", ProtoManifest, found(MaxManifest + 1), true, askManifest, errTooLarge, "", false},
		{"manifest announcing 2^62 bytes", ProtoManifest, found(1 << 62), true, askManifest, errTooLarge, "", false},
		{"manifest truncated", ProtoManifest, cat(found(uint64(len(a.raw))), a.raw[:len(a.raw)/2]), false, askManifest, io.ErrUnexpectedEOF, "", false},
		{"chunk over its bound", ProtoChunks, found(maxObject + 1), true, askChunk, errTooLarge, "", true},
		{"chunk truncated", ProtoChunks, cat(found(uint64(len(obj0))), obj0[:len(obj0)/2]), false, askChunk, io.ErrUnexpectedEOF, "", true},
		{"chunk unknown status", ProtoChunks, []byte{2}, false, askChunk, nil, "unknown status 2", true},
		{"delta over its bound", ProtoDelta, found(maxDeltaObject + 1), true, askDelta, errTooLarge, "", true},
		{"delta truncated", ProtoDelta, cat(found(100), []byte("(zstd")), false, askDelta, io.ErrUnexpectedEOF, "", true},
		{"delta unknown status", ProtoDelta, []byte{7}, false, askDelta, nil, "unknown status 7", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := lanNode(t, &chunkBackend{}, func(c *Config) {
				c.StreamTimeout, c.BatchTimeout, c.HaveTimeout = 5*time.Second, 5*time.Second, 5*time.Second
			})
			f := rawHost(t)
			fakeAnswers(f, ProtoHave, []byte{1}, false)
			floods := fakeAnswers(f, tc.proto, tc.answer, tc.endless)
			introduce(t, n, peer.AddrInfo{ID: f.ID(), Addrs: f.Addrs()})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			err := tc.ask(ctx, n)
			switch {
			case err == nil:
				t.Fatal("bad answer accepted")
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			case tc.wantText != "" && !strings.Contains(err.Error(), tc.wantText):
				t.Fatalf("error %v, want it to say %q", err, tc.wantText)
			}
			if got := n.blocks.blocked(f.ID()); got != tc.dropped {
				t.Fatalf("peer dropped: %v, want %v", got, tc.dropped)
			}
			if !tc.endless {
				return
			}
			select {
			case fl := <-floods:
				// The asker stopped at the length and reset the stream; it didn't read
				// (or hold) what the frame announced. A peer being dropped may see its
				// connection close before the reset arrives: stopped either way.
				if tc.dropped && fl.err != nil {
					break
				}
				if !errors.Is(fl.err, network.ErrReset) {
					t.Fatalf("the flooding peer stopped with %v, want a reset", fl.err)
				}
				t.Logf("the flooding peer got %d bytes out before the reset", fl.written)
			case <-ctx.Done():
				t.Fatal("the flooding peer's stream was never reset")
			}
		})
	}
}
