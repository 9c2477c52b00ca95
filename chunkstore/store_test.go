package chunkstore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/manifest"
)

func TestInitRefusesMixing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := chunkstore.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, err := s.Init(ctx, "file:///cache", chunk.DefaultParams(), chunkstore.Mode{}, now); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, chunkstore.CacheInfoKey)); err != nil {
		t.Errorf("nix-cache-info not written: %v", err)
	}
	other := chunk.Params{Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}
	tests := []struct {
		name   string
		source string
		params chunk.Params
		ok     bool
	}{
		{"same", "file:///cache", chunk.DefaultParams(), true},
		{"other chunker", "file:///cache", other, false},
		{"other source", "https://elsewhere", chunk.DefaultParams(), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Init(ctx, tc.source, tc.params, chunkstore.Mode{}, now)
			if (err == nil) != tc.ok {
				t.Errorf("Init: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestMetaFromTheFuture(t *testing.T) {
	dir := t.TempDir()
	meta := `{"version": 2, "source": "x", "chunker": "` + chunk.DefaultParams().Identity() + `"}`
	if err := os.WriteFile(filepath.Join(dir, chunkstore.MetaKey), []byte(meta), 0o644); err != nil {
		t.Fatal(err)
	}
	s, _ := chunkstore.Open(dir, nil)
	if _, err := s.Meta(context.Background()); err == nil || !strings.Contains(err.Error(), "upgrade shoal") {
		t.Errorf("Meta of a version 2 store: %v", err)
	}
}

func TestManifestMustDescribeTheNARAskedFor(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := chunkstore.Open(dir, nil)
	data := []byte("a NAR")
	m := &manifest.Manifest{NarSize: uint64(len(data)), Chunker: chunk.DefaultParams().Identity(),
		Entries: []manifest.Entry{{ID: chunk.Sum(data), Size: uint32(len(data)), StoredSize: 20}}}
	m.NarHash[0] = 1
	if err := s.PutManifest(ctx, m); err != nil {
		t.Fatal(err)
	}
	got, _, err := s.Manifest(ctx, m.NarHash)
	if err != nil || got.NarSize != m.NarSize {
		t.Fatalf("Manifest: %v", err)
	}
	// Serve it under another NAR's name: the store must not hand it out.
	var other [32]byte
	other[0] = 2
	raw, _ := m.MarshalBinary()
	if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(chunkstore.ManifestKey(manifest.Key(other)))), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Manifest(ctx, other); err == nil {
		t.Error("a manifest filed under another NarHash was accepted")
	}
	var absent [32]byte
	if _, _, err := s.Manifest(ctx, absent); !errors.Is(err, shoal.ErrNotFound) {
		t.Errorf("missing manifest: %v, want shoal.ErrNotFound", err)
	}
}

func TestChunkKeyFansOut(t *testing.T) {
	id := chunk.Sum([]byte("x"))
	if got, want := chunkstore.ChunkKey(id), "chunks/"+id.String()[:2]+"/"+id.String(); got != want {
		t.Errorf("ChunkKey = %q, want %q", got, want)
	}
}

func TestDeltaObjects(t *testing.T) {
	ctx := context.Background()
	s, err := chunkstore.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	target, base := chunk.Sum([]byte("new")), chunk.Sum([]byte("old"))
	id := chunk.DeltaID(target, []chunk.ID{base})
	if _, ok, err := s.RefreshDelta(ctx, id); ok || err != nil {
		t.Fatalf("RefreshDelta of an absent delta = %v, %v", ok, err)
	}
	if err := s.PutDelta(ctx, id, []byte("delta bytes")); err != nil {
		t.Fatal(err)
	}
	if size, ok, err := s.RefreshDelta(ctx, id); !ok || err != nil || size != int64(len("delta bytes")) {
		t.Fatalf("RefreshDelta = %d, %v, %v", size, ok, err)
	}
	if got, err := s.Delta(ctx, id); err != nil || string(got) != "delta bytes" {
		t.Fatalf("Delta = %q, %v", got, err)
	}
	if err := s.PutChunk(ctx, target, []byte("chunk")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutNarInfo(ctx, strings.Repeat("a", 32), []byte("x")); err != nil {
		t.Fatal(err)
	}
	inv, err := s.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Deltas) != 1 || inv.Deltas[0] != id || len(inv.Chunks) != 1 || inv.Chunks[0] != target {
		t.Fatalf("inventory %+v", inv)
	}
	var hps []string
	if err := s.NarInfos(ctx, func(hp string) error { hps = append(hps, hp); return nil }); err != nil || len(hps) != 1 {
		t.Fatalf("NarInfos = %v, %v", hps, err)
	}
	for key, ok := range map[string]bool{
		chunkstore.DeltaKey(id):          true,
		chunkstore.ChunkKey(id):          false,
		"deltas/" + id.String():          false,
		chunkstore.DeltaKey(id) + ".tmp": false,
	} {
		if _, got := chunkstore.ParseDeltaKey(key); got != ok {
			t.Errorf("ParseDeltaKey(%q) ok = %v, want %v", key, got, ok)
		}
	}
}
