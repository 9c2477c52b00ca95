package fetch_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
)

// liar is a peer that claims every NAR: it answers with a made-up manifest of the
// right NarHash and NarSize whose chunks it holds (so each passes its ID check), but
// which do not make up the NAR. It stands in for a stranger on the LAN.
type liar struct {
	fetch.NoDeltas
	raw  []byte
	objs map[chunk.ID][]byte

	mu             sync.Mutex
	manifestAsks   int
	rejected       []error
	chunksServed   int
	rejectedChunks int
}

var _ fetch.Source = (*liar)(nil)

func newLiar(t *testing.T, codec *chunk.Codec, narHash [32]byte, size int) *liar {
	t.Helper()
	junk := testkit.RandomBytes(99, size)
	l := &liar{objs: map[chunk.ID][]byte{}}
	m, err := manifest.Build(context.Background(), bytes.NewReader(junk), chunk.DefaultParams(), func(id chunk.ID, raw []byte) (int, error) {
		obj := codec.Encode(nil, raw)
		l.objs[id] = obj
		return len(obj), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m.NarHash = narHash // the lie
	if l.raw, err = m.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *liar) Name() string     { return "peer" }
func (l *liar) Kind() fetch.Kind { return fetch.Peer }
func (l *liar) Manifest(context.Context, [32]byte) ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.manifestAsks++
	return l.raw, nil
}
func (l *liar) RejectManifest(_ [32]byte, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rejected = append(l.rejected, err)
}
func (l *liar) Open(context.Context, *manifest.Manifest) (fetch.Offer, error) { return l, nil }
func (l *liar) Holds(ids []chunk.ID) ([]bool, error) {
	held := make([]bool, len(ids))
	for i := range held {
		held[i] = true
	}
	return held, nil
}
func (l *liar) Chunk(_ context.Context, e manifest.Entry) (fetch.Object, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	obj, ok := l.objs[e.ID]
	if !ok {
		return fetch.Object{}, fmt.Errorf("chunk %s: %w", e.ID, shoal.ErrNotFound)
	}
	l.chunksServed++
	return fetch.Object{Frame: obj}, nil
}
func (l *liar) Reject(chunk.ID, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rejectedChunks++
}

// TestLyingPeerManifest: a peer's manifest that does not assemble into the NAR costs a
// try, never the NAR. The chunk store's manifest is preferred when there is one (the
// peer is not even asked); without one, the peer's manifest is tried, rejected (so the
// peer is dropped), its chunks leave the cache, and the NAR comes whole from the
// upstream.
func TestLyingPeerManifest(t *testing.T) {
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	nar := testkit.RandomBytes(1, 600_000)
	up := cachetest.New(t, "test-1")
	ni := up.Add(t, cachetest.HashPart("lie"), "demo-1.0", nar, "zstd")
	upBlob, err := blob.Open(up.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	upstream := nixcache.NewBinaryCache(upBlob)

	tests := []struct {
		name           string
		storeManifest  bool
		wantAsks       int
		wantRejected   int
		wantUpstream   bool
		wantStoreBytes bool
	}{
		{name: "store has a manifest", storeManifest: true, wantAsks: 0, wantStoreBytes: true},
		{name: "only the liar has one", storeManifest: false, wantAsks: 1, wantRejected: 1, wantUpstream: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := chunkstore.Open(t.TempDir(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.storeManifest {
				publishNAR(t, st, codec, nar)
			}
			l := newLiar(t, codec, ni.NarHash, len(nar))
			c := newCounters()
			fe := fetcherOver(t, codec, c, l, &fetch.StoreSource{Store: st})
			fe.Upstream = fetch.Upstream{Caches: []*nixcache.BinaryCache{upstream}}
			got, err := wait(fe, fetch.Request{Info: ni, From: upstream.String(), KnownPackage: true})
			if err != nil {
				t.Fatalf("fetching: %v", err)
			}
			if out := readBack(t, fe, got); !bytes.Equal(out, nar) {
				t.Fatal("the NAR read back differs")
			}
			if l.manifestAsks != tc.wantAsks || len(l.rejected) != tc.wantRejected {
				t.Errorf("liar asked for its manifest %d times and rejected %d times (%v); want %d and %d",
					l.manifestAsks, len(l.rejected), l.rejected, tc.wantAsks, tc.wantRejected)
			}
			if up := c.get(c.bytes, "upstream") > 0; up != tc.wantUpstream {
				t.Errorf("whole NAR from the upstream: %v, want %v", up, tc.wantUpstream)
			}
			if st := c.get(c.bytes, "store") > 0; st != tc.wantStoreBytes {
				t.Errorf("chunks from the store: %v, want %v", st, tc.wantStoreBytes)
			}
			var junk []chunk.ID
			for id := range l.objs {
				junk = append(junk, id)
			}
			held, err := fe.Cache.HasChunks(junk)
			if err != nil {
				t.Fatal(err)
			}
			for i, h := range held {
				if h {
					t.Errorf("the liar's chunk %s stayed in the cache", junk[i])
				}
			}
		})
	}
}
