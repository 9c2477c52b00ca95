package localcache

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
)

func TestLocations(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "cache.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	a, b, shared := chunk.Sum([]byte("a")), chunk.Sum([]byte("b")), chunk.Sum([]byte("shared"))
	p1, p2 := "/nix/store/00000000000000000000000000000000-x-1", "/nix/store/11111111111111111111111111111111-x-2"
	rec1 := SeededPath{StorePath: p1, NarHash: [32]byte{1}, NarSize: 300, Chunks: 2, Indexed: time.Unix(100, 5).UTC()}
	if err := c.PutSeeded(ctx, rec1, []LocatedChunk{{a, ChunkLocation{p1, 0, 100}}, {shared, ChunkLocation{p1, 100, 200}}}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutSeeded(ctx, SeededPath{StorePath: p2, NarSize: 1 << 40}, []LocatedChunk{{b, ChunkLocation{p2, 1 << 39, 7}}, {shared, ChunkLocation{p2, 9, 200}}}); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Seeded(p1); err != nil || got != rec1 {
		t.Fatalf("Seeded(p1) = %+v, %v; want %+v", got, err, rec1)
	}
	tests := []struct {
		id   chunk.ID
		want ChunkLocation
	}{
		{a, ChunkLocation{p1, 0, 100}},
		{b, ChunkLocation{p2, 1 << 39, 7}},
		{shared, ChunkLocation{p1, 100, 200}}, // the first path to have it keeps it
	}
	for _, tc := range tests {
		if got, err := c.ChunkLocation(tc.id); err != nil || got != tc.want {
			t.Errorf("ChunkLocation(%s) = %+v, %v; want %+v", tc.id, got, err, tc.want)
		}
	}
	// A drop names the path whose bytes failed; a location elsewhere stays.
	if err := c.DropLocation(shared, p2); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ChunkLocation(shared); err != nil {
		t.Fatalf("dropping p2's copy removed p1's location: %v", err)
	}
	if err := c.DropLocation(shared, p1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ChunkLocation(shared); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("location kept after its drop: %v", err)
	}
	have, err := c.HasLocations([]chunk.ID{a, shared, b})
	if err != nil || !have[0] || have[1] || !have[2] {
		t.Fatalf("HasLocations = %v, %v", have, err)
	}
	if err := c.ForgetSeeded(p1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Seeded(p1); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("Seeded after ForgetSeeded: %v", err)
	}
	for _, v := range [][]byte{nil, {2}, {locationFormat, 0x80}, append(encodeLocation(ChunkLocation{p1, 1, 2}), 0)} {
		if _, err := decodeLocation(v); err == nil {
			t.Errorf("decodeLocation(%x) accepted a bad record", v)
		}
	}
}
