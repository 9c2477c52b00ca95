package manifest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/internal/testkit"
)

// memStore is a put function's backing: chunks by ID, with their stored size.
type memStore struct {
	chunks map[chunk.ID][]byte
	puts   int
}

func (s *memStore) put(id chunk.ID, raw []byte) (int, error) {
	s.puts++
	if chunk.Sum(raw) != id {
		return 0, errors.New("put called with an ID that does not match the bytes")
	}
	if s.chunks == nil {
		s.chunks = map[chunk.ID][]byte{}
	}
	s.chunks[id] = bytes.Clone(raw)
	return len(raw)/2 + 7, nil
}

func TestBuild(t *testing.T) {
	repeated := testkit.RandomBytes(9, 100<<10)
	inputs := map[string][]byte{
		"empty":      nil,
		"tiny":       []byte("nix-archive-1"),
		"random":     testkit.RandomBytes(1, 3<<20+11),
		"repetitive": bytes.Repeat(repeated, 8),
	}
	for _, p := range []chunk.Params{chunk.DefaultParams(), small} {
		for name, in := range inputs {
			t.Run(p.Identity()+"/"+name, func(t *testing.T) {
				var s memStore
				m, err := Build(context.Background(), iotest.HalfReader(bytes.NewReader(in)), p, s.put)
				if err != nil {
					t.Fatal(err)
				}
				if m.NarHash != sha256.Sum256(in) {
					t.Error("NarHash is not the SHA-256 of the input")
				}
				if m.NarSize != uint64(len(in)) || m.Chunker != p.Identity() {
					t.Errorf("NarSize %d, Chunker %q; want %d, %q", m.NarSize, m.Chunker, len(in), p.Identity())
				}
				if s.puts != len(m.Entries) {
					t.Errorf("put called %d times for %d entries", s.puts, len(m.Entries))
				}
				var out []byte
				var stored uint64
				for _, e := range m.Entries {
					c := s.chunks[e.ID]
					if len(c) != int(e.Size) || int(e.StoredSize) != len(c)/2+7 {
						t.Fatalf("entry %+v does not describe its chunk (%d bytes)", e, len(c))
					}
					out = append(out, c...)
					stored += uint64(e.StoredSize)
				}
				if !bytes.Equal(out, in) {
					t.Fatal("chunks in manifest order do not reproduce the input")
				}
				if m.StoredSize() != stored {
					t.Errorf("StoredSize %d, want %d", m.StoredSize(), stored)
				}
				b, err := m.MarshalBinary()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := Parse(b); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

func TestBuildDeduplicatesRepeats(t *testing.T) {
	block := testkit.RandomBytes(3, 2<<20)
	var s memStore
	m, err := Build(context.Background(), bytes.NewReader(bytes.Repeat(block, 4)), chunk.DefaultParams(), s.put)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.chunks) >= len(m.Entries)/2 {
		t.Fatalf("%d distinct chunks for %d entries over 4 copies of one block", len(s.chunks), len(m.Entries))
	}
}

func TestBuildErrors(t *testing.T) {
	in := testkit.RandomBytes(5, 1<<20)
	boom := errors.New("boom")
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		r    io.Reader
		p    chunk.Params
		put  func(chunk.ID, []byte) (int, error)
		want error
	}{
		{"canceled", canceled, bytes.NewReader(in), small, (&memStore{}).put, context.Canceled},
		{"read error", context.Background(), io.MultiReader(bytes.NewReader(in), iotest.ErrReader(boom)), small, (&memStore{}).put, boom},
		{"put error", context.Background(), bytes.NewReader(in), small, func(chunk.ID, []byte) (int, error) { return 0, boom }, boom},
		{"stored size too large", context.Background(), bytes.NewReader(in), small, func(chunk.ID, []byte) (int, error) { return 1 << 32, nil }, nil},
		{"negative stored size", context.Background(), bytes.NewReader(in), small, func(chunk.ID, []byte) (int, error) { return -1, nil }, nil},
		{"bad params", context.Background(), bytes.NewReader(in), chunk.Params{Min: 1, Avg: 2, Max: 3}, (&memStore{}).put, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Build(tt.ctx, tt.r, tt.p, tt.put)
			if err == nil || m != nil {
				t.Fatalf("Build = %v, %v; want an error", m, err)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Build error %v does not wrap %v", err, tt.want)
			}
		})
	}
}

func TestBuildStopsWhenCanceledMidway(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := 0
	_, err := Build(ctx, bytes.NewReader(testkit.RandomBytes(6, 1<<20)), small, func(chunk.ID, []byte) (int, error) {
		calls++
		if calls == 3 {
			cancel()
		}
		return 1, nil
	})
	if !errors.Is(err, context.Canceled) || calls != 3 {
		t.Fatalf("Build = %v after %d puts; want context.Canceled after 3", err, calls)
	}
}
