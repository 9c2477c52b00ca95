package chunkstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
)

// packFixture is a packed store behind a real HTTP server that counts the requests
// for packs and can fail the first few.
type packFixture struct {
	st       *chunkstore.Store
	raws     [][]byte              // the chunks, in the order of their objects in the pack
	reads    []chunkstore.PackRead // one per chunk: its object
	pack     chunk.ID
	requests atomic.Int64
	failNext atomic.Int64 // answer this many pack requests with 500
}

func newPackFixture(t *testing.T, n int) *packFixture {
	t.Helper()
	dir := t.TempDir()
	fs, err := chunkstore.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	f := &packFixture{}
	var pb chunkstore.PackBuilder
	for i := range n {
		raw := bytes.Repeat([]byte(fmt.Sprintf("chunk %d of the fixture; ", i)), 200+i*13)
		obj := codec.Encode(nil, raw)
		id := chunk.Sum(raw)
		off := pb.Add(chunkstore.KindChunk, id, obj)
		f.raws = append(f.raws, raw)
		f.reads = append(f.reads, chunkstore.PackRead{Offset: off, Length: uint32(len(obj)), ID: id, Size: uint32(len(raw))})
	}
	data, x := pb.Seal()
	if err := fs.PutPack(context.Background(), data, x); err != nil {
		t.Fatal(err)
	}
	f.pack = x.Pack
	for i := range f.reads {
		f.reads[i].Pack = x.Pack
	}
	files := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/"+chunkstore.PackPrefix) {
			f.requests.Add(1)
			if f.failNext.Add(-1) >= 0 {
				http.Error(w, "try again", http.StatusInternalServerError)
				return
			}
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	if f.st, err = chunkstore.Open(srv.URL, srv.Client()); err != nil {
		t.Fatal(err)
	}
	return f
}

type readOutcome struct {
	obj, raw []byte
	err      error
}

func readAll(t *testing.T, f *packFixture, opts chunkstore.ReadOptions, reads []chunkstore.PackRead) ([]readOutcome, chunkstore.ReadStats) {
	t.Helper()
	r, err := chunkstore.NewPackReader(f.st, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out []readOutcome
	stats, err := r.Read(context.Background(), reads, func(i int, obj, raw []byte, err error) error {
		if i != len(out) {
			t.Fatalf("callback for read %d after %d reads", i, len(out))
		}
		out = append(out, readOutcome{obj, raw, err})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(reads) {
		t.Fatalf("%d callbacks for %d reads", len(out), len(reads))
	}
	return out, stats
}

func TestPackReaderCoalesces(t *testing.T) {
	f := newPackFixture(t, 40)
	var total int64
	for _, rd := range f.reads {
		total += int64(rd.Length)
	}
	every := func(step int) []int {
		var idx []int
		for i := 0; i < len(f.reads); i += step {
			idx = append(idx, i)
		}
		return idx
	}
	// With requests of at most maxRange bytes, whole objects each, in pack order.
	maxRange := int(total / 4)
	bounded, size := int64(1), 0
	for _, rd := range f.reads {
		if size+int(rd.Length) > maxRange {
			bounded, size = bounded+1, 0
		}
		size += int(rd.Length)
	}
	reversed := make([]int, len(f.reads))
	for i := range reversed {
		reversed[i] = len(reversed) - 1 - i
	}
	tests := []struct {
		name         string
		opts         chunkstore.ReadOptions
		idx          []int
		wantRequests int64
		wantExact    bool // bytes read == bytes wanted
	}{
		{"a whole pack in order", chunkstore.ReadOptions{}, every(1), 1, true},
		{"in reverse order", chunkstore.ReadOptions{}, reversed, 1, true},
		{"every other object, gaps read through", chunkstore.ReadOptions{}, every(2), 1, false},
		{"every other object, gaps too large", chunkstore.ReadOptions{MaxGap: 1, Overread: -1}, every(2), 20, true},
		{"every other object, within the overread budget", chunkstore.ReadOptions{MaxGap: 1, Overread: 1}, every(2), 1, false},
		// Some gaps merged, and no more read through than the budget.
		{"every other object, some within the budget", chunkstore.ReadOptions{MaxGap: 1, Overread: 0.2}, every(2), -1, false},
		{"requests bounded", chunkstore.ReadOptions{MaxRange: maxRange}, every(1), bounded, true},
		{"small windows", chunkstore.ReadOptions{Window: 1}, every(1), 40, true},
		{"the same object twice", chunkstore.ReadOptions{}, []int{3, 3, 4}, 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.requests.Store(0)
			var reads []chunkstore.PackRead
			for _, i := range tc.idx {
				reads = append(reads, f.reads[i])
			}
			out, stats := readAll(t, f, tc.opts, reads)
			for k, o := range out {
				if o.err != nil || !bytes.Equal(o.raw, f.raws[tc.idx[k]]) || len(o.obj) != int(reads[k].Length) {
					t.Fatalf("read %d (object %d): %v, or other bytes", k, tc.idx[k], o.err)
				}
			}
			got := f.requests.Load()
			if int64(stats.Requests) != got {
				t.Errorf("%d requests, stats say %d", got, stats.Requests)
			}
			if tc.wantRequests < 0 {
				if got <= 1 || got >= int64(len(reads)) || float64(stats.BytesRead-stats.BytesWanted) > tc.opts.Overread*float64(stats.BytesWanted) {
					t.Errorf("%d requests for %d reads, %d bytes read for %d wanted", got, len(reads), stats.BytesRead, stats.BytesWanted)
				}
			} else if got != tc.wantRequests {
				t.Errorf("%d requests, want %d", got, tc.wantRequests)
			}
			if exact := stats.BytesRead == stats.BytesWanted; exact != tc.wantExact && tc.name != "the same object twice" {
				t.Errorf("read %d bytes for %d wanted", stats.BytesRead, stats.BytesWanted)
			}
		})
	}
}

// TestPackReaderNeverHandsOutWrongBytes points reads at the wrong places; each such
// read fails alone, with an error that says why, and the others succeed.
func TestPackReaderNeverHandsOutWrongBytes(t *testing.T) {
	f := newPackFixture(t, 10)
	good := f.reads[1]
	tests := []struct {
		name string
		edit func(rd *chunkstore.PackRead)
		want error
	}{
		{"another object's place", func(rd *chunkstore.PackRead) { rd.Offset, rd.Length = f.reads[0].Offset, f.reads[0].Length }, chunk.ErrCorrupt},
		{"shifted by one byte", func(rd *chunkstore.PackRead) { rd.Offset++ }, nil},
		{"past the pack's end", func(rd *chunkstore.PackRead) { rd.Offset += 1 << 30 }, blob.ErrRange},
		{"a pack that is not there", func(rd *chunkstore.PackRead) { rd.Pack = chunk.Sum([]byte("gone")) }, shoal.ErrNotFound},
		{"a delta whose dictionary is missing", func(rd *chunkstore.PackRead) {
			rd.Dict = func() ([]byte, error) { return nil, errors.New("base chunk evicted") }
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bad := good
			tc.edit(&bad)
			out, _ := readAll(t, f, chunkstore.ReadOptions{MaxGap: 1, Overread: -1}, []chunkstore.PackRead{f.reads[0], bad, f.reads[2]})
			if out[1].err == nil || out[1].raw != nil {
				t.Fatalf("a wrong location gave %d bytes and no error", len(out[1].raw))
			}
			if tc.want != nil && !errors.Is(out[1].err, tc.want) {
				t.Fatalf("error %v, want %v", out[1].err, tc.want)
			}
			for _, k := range []int{0, 2} {
				if out[k].err != nil || !bytes.Equal(out[k].raw, f.raws[k]) {
					t.Fatalf("read %d beside the bad one: %v", k, out[k].err)
				}
			}
		})
	}
}

func TestPackReaderRetries(t *testing.T) {
	f := newPackFixture(t, 5)
	f.failNext.Store(2)
	out, stats := readAll(t, f, chunkstore.ReadOptions{}, f.reads)
	for k, o := range out {
		if o.err != nil {
			t.Fatalf("read %d after two failed attempts: %v", k, o.err)
		}
	}
	if stats.Requests != 3 {
		t.Errorf("%d requests, want 3", stats.Requests)
	}
	f.failNext.Store(10)
	out, _ = readAll(t, f, chunkstore.ReadOptions{Attempts: 2}, f.reads[:1])
	if out[0].err == nil || !strings.Contains(out[0].err.Error(), "500") {
		t.Fatalf("a store failing every attempt: %v", out[0].err)
	}
}

func TestPackReaderDeltas(t *testing.T) {
	dir := t.TempDir()
	s, _ := chunkstore.Open(dir, nil)
	codec, _ := chunk.NewCodec()
	defer codec.Close()
	dc := chunk.NewDeltaCodec(0, 1)
	defer dc.Close()
	base := bytes.Repeat([]byte("the base chunk of an older release, "), 500)
	target := bytes.Clone(base)
	copy(target[100:], "a small edit")
	obj, err := dc.EncodeDelta(nil, target, base)
	if err != nil {
		t.Fatal(err)
	}
	var pb chunkstore.PackBuilder
	id := chunk.Sum(target)
	pb.Add(chunkstore.KindDelta, chunk.DeltaID(id, []chunk.ID{chunk.Sum(base)}), obj)
	data, x := pb.Seal()
	if err := s.PutPack(context.Background(), data, x); err != nil {
		t.Fatal(err)
	}
	r, _ := chunkstore.NewPackReader(s, chunkstore.ReadOptions{})
	defer r.Close()
	calls := 0
	rd := chunkstore.PackRead{Pack: x.Pack, Length: uint32(len(obj)), ID: id, Size: uint32(len(target)),
		Dict: func() ([]byte, error) { calls++; return base, nil }}
	var got []byte
	if _, err := r.Read(context.Background(), []chunkstore.PackRead{rd}, func(i int, obj, raw []byte, err error) error {
		got = raw
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, target) || calls != 1 {
		t.Fatalf("delta read: %d bytes, dictionary asked %d times", len(got), calls)
	}
}

func TestPackReaderStopsWhenTold(t *testing.T) {
	f := newPackFixture(t, 20)
	r, _ := chunkstore.NewPackReader(f.st, chunkstore.ReadOptions{Window: 1})
	defer r.Close()
	stop := errors.New("enough")
	calls := 0
	_, err := r.Read(context.Background(), f.reads, func(i int, obj, raw []byte, err error) error {
		calls++
		if i == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || calls != 4 {
		t.Fatalf("Read = %v after %d calls, want the callback's error after 4", err, calls)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Read(ctx, f.reads, func(int, []byte, []byte, error) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Read with a cancelled context = %v", err)
	}
}

// TestPackReaderReadStored: ReadStored hands over the objects as they lie in the pack,
// for a caller that opens them itself: the bytes at a location that holds another
// object come back as they are, where Read refuses them; a pack that is not there is
// an error either way; requests are coalesced the same.
func TestPackReaderReadStored(t *testing.T) {
	f := newPackFixture(t, 10)
	r, err := chunkstore.NewPackReader(f.st, chunkstore.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	reads := slices.Clone(f.reads)
	reads[1].Offset, reads[1].Length = f.reads[0].Offset, f.reads[0].Length // another object's place
	reads[2].Pack = chunk.Sum([]byte("gone"))
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	before := f.requests.Load()
	var got int
	stats, err := r.ReadStored(context.Background(), reads, func(i int, obj []byte, err error) error {
		if i != got {
			t.Fatalf("callback for read %d after %d reads", i, got)
		}
		got++
		switch {
		case i == 2:
			if !errors.Is(err, shoal.ErrNotFound) {
				t.Errorf("read of a missing pack: %v, want shoal.ErrNotFound", err)
			}
			return nil
		case err != nil:
			t.Errorf("read %d: %v", i, err)
			return nil
		}
		want := i
		if i == 1 {
			want = 0 // what lies there
		}
		raw, err := codec.Decode(nil, obj, chunk.MaxChunkSize)
		if err != nil || !bytes.Equal(raw, f.raws[want]) {
			t.Errorf("read %d: stored object holds other bytes (%v)", i, err)
		}
		return nil
	})
	if err != nil || got != len(reads) {
		t.Fatalf("ReadStored: %v after %d of %d reads", err, got, len(reads))
	}
	if n := f.requests.Load() - before; n > 2 || int64(stats.Requests) != n {
		t.Errorf("%d pack requests (stats say %d) for one pack's neighbours and a missing one", n, stats.Requests)
	}
}
