package maintain

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/publish"
)

// release is the previous release with a few bytes changed every stride bytes, as a
// rebuilt binary changes: every chunk is new, and a small delta of the previous one.
func release(prev []byte, seed byte, stride int) []byte {
	out := bytes.Clone(prev)
	for i := stride / 2; i < len(out); i += stride {
		out[i] ^= seed
	}
	return out
}

func (f *fixture) publishDeltas(t *testing.T, hps ...string) publish.Summary {
	t.Helper()
	sum := f.publishWith(t, publish.Options{Params: smallParams, Jobs: 2, Deltas: true}, hps...)
	if sum.Deltas == 0 {
		t.Fatalf("publish wrote no deltas: %+v", sum)
	}
	return sum
}

// deltasOf returns the delta IDs hp's manifest names.
func (f *fixture) deltasOf(t *testing.T, hp string) []chunk.ID {
	t.Helper()
	m, _, err := f.store.Manifest(context.Background(), f.nis[hp].NarHash)
	if err != nil {
		t.Fatal(err)
	}
	var ids []chunk.ID
	for i := range m.Entries {
		if _, id, _, ok := m.DeltaOf(i); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

func TestCollectDeltas(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, open(t))
			r1 := testkit.RandomBytes(41, 120<<10)
			r2 := release(r1, 1, 3000)
			r3 := release(r2, 2, 2000)
			v1, v2, v3 := f.add(t, "pkg-1", r1), f.add(t, "pkg-2", r2), f.add(t, "pkg-3", r3)
			f.publishDeltas(t, v1, v2, v3)
			orphan := chunk.DeltaID(chunk.Sum([]byte("gone")), []chunk.ID{chunk.Sum([]byte("base"))})
			if err := f.store.PutDelta(ctx, orphan, []byte("a delta no manifest names")); err != nil {
				t.Fatal(err)
			}
			live, dead := f.deltasOf(t, v3), f.deltasOf(t, v2)
			if len(live) == 0 || len(dead) == 0 {
				t.Fatalf("deltas: %d of pkg-3, %d of pkg-2", len(live), len(dead))
			}
			const grace = time.Second
			waitOlder(grace)

			rep, err := Collect(ctx, f.store, Options{Keep: func(hp string) bool { return hp == v3 }, Grace: grace})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Deltas.Kept != int64(len(live)) || rep.Deltas.Deleted != int64(len(dead))+1 {
				t.Errorf("deltas kept %d, deleted %d; want %d kept, %d deleted", rep.Deltas.Kept, rep.Deltas.Deleted, len(live), len(dead)+1)
			}
			exists := func(id chunk.ID) bool {
				ok, err := f.store.Backend().Exists(ctx, chunkstore.DeltaKey(id))
				if err != nil {
					t.Fatal(err)
				}
				return ok
			}
			for _, id := range live {
				if !exists(id) {
					t.Errorf("live delta %s was collected", id)
				}
			}
			for _, id := range append(dead, orphan) {
				if exists(id) {
					t.Errorf("delta %s no kept manifest names survived", id)
				}
			}
			f.complete(t, v3)
			f.verify(t)
		})
	}
}

func TestVerifyFindsBadDeltas(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	r1 := testkit.RandomBytes(51, 120<<10)
	v1, v2 := f.add(t, "pkg-1", r1), f.add(t, "pkg-2", release(r1, 1, 3000))
	f.publishDeltas(t, v1, v2)
	ids := f.deltasOf(t, v2)
	rep, problems, err := Verify(ctx, f.store, VerifyOptions{})
	if err != nil || problems != 0 || rep.Deltas != len(ids) {
		t.Fatalf("verify of a sound store: %d deltas checked of %d, %d problems %q, %v", rep.Deltas, len(ids), problems, rep.Problems, err)
	}

	be := f.store.Backend()
	// One delta's bytes damaged (same length), another missing.
	obj, err := f.store.Delta(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	obj[len(obj)/2] ^= 0xff
	if err := be.Put(ctx, chunkstore.DeltaKey(ids[0]), obj); err != nil {
		t.Fatal(err)
	}
	if err := be.Delete(ctx, chunkstore.DeltaKey(ids[1])); err != nil {
		t.Fatal(err)
	}
	rep, problems, err = Verify(ctx, f.store, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(rep.Problems, "\n")
	if problems != 2 || !strings.Contains(joined, "delta of chunk 0 ") || !strings.Contains(joined, "is missing: "+chunkstore.DeltaKey(ids[1])) {
		t.Errorf("%d problems, want the damaged and the missing delta:\n%s", problems, joined)
	}

	// Once the base NAR is collected its chunks are gone: the deltas cannot be
	// checked, which is not a problem (clients hold the base).
	waitOlder(0)
	if _, err := Collect(ctx, f.store, Options{Keep: func(hp string) bool { return hp == v2 }}); err != nil {
		t.Fatal(err)
	}
	rep, _, err = Verify(ctx, f.store, VerifyOptions{})
	if err != nil || rep.Deltas != 0 {
		t.Errorf("after collecting the base: %d deltas checked, %v", rep.Deltas, err)
	}
}
