package store_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/store"
)

func TestInitRefusesMixing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := store.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, err := s.Init(ctx, "file:///cache", chunk.DefaultParams(), now); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, store.CacheInfoKey)); err != nil {
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
			_, err := s.Init(ctx, tc.source, tc.params, now)
			if (err == nil) != tc.ok {
				t.Errorf("Init: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestMetaFromTheFuture(t *testing.T) {
	dir := t.TempDir()
	meta := `{"version": 2, "source": "x", "chunker": "` + chunk.DefaultParams().Identity() + `"}`
	if err := os.WriteFile(filepath.Join(dir, store.MetaKey), []byte(meta), 0o644); err != nil {
		t.Fatal(err)
	}
	s, _ := store.Open(dir, nil)
	if _, err := s.Meta(context.Background()); err == nil || !strings.Contains(err.Error(), "upgrade shoal") {
		t.Errorf("Meta of a version 2 store: %v", err)
	}
}

func TestManifestMustDescribeTheNARAskedFor(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := store.Open(dir, nil)
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
	if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(store.ManifestKey(manifest.Key(other)))), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Manifest(ctx, other); err == nil {
		t.Error("a manifest filed under another NarHash was accepted")
	}
	var absent [32]byte
	if _, _, err := s.Manifest(ctx, absent); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("missing manifest: %v, want ErrNotFound", err)
	}
}

func TestChunkKeyFansOut(t *testing.T) {
	id := chunk.Sum([]byte("x"))
	if got, want := store.ChunkKey(id), "chunks/"+id.String()[:2]+"/"+id.String(); got != want {
		t.Errorf("ChunkKey = %q, want %q", got, want)
	}
}
