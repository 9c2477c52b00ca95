package chunkstore_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
)

// FuzzMeta feeds arbitrary shoal-store.json files, as a store's server may serve them,
// to the reader every daemon and publish run starts with: the file is refused with an
// error or describes a store this shoal can read, cut by a chunker it knows.
func FuzzMeta(f *testing.F) {
	good, err := json.MarshalIndent(chunkstore.Meta{Version: chunkstore.FormatVersion, Source: "https://cache.nixos.org", Chunker: chunk.DefaultParams().Identity(), Created: time.Unix(1_700_000_000, 0).UTC()}, "", "  ")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"version":2,"chunker":"` + chunk.DefaultParams().Identity() + `"}`))
	f.Add([]byte(`{"version":3,"chunker":"` + chunk.DefaultParams().Identity() + `"}`))
	f.Add([]byte(`{"version":-1,"chunker":"` + chunk.DefaultParams().Identity() + `"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[`))
	dir := f.TempDir()
	s, err := chunkstore.Open(dir, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if err := os.WriteFile(filepath.Join(dir, chunkstore.MetaKey), raw, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := s.Meta(context.Background())
		if err != nil {
			return
		}
		if m.Version != chunkstore.FormatVersion && m.Version != chunkstore.FormatPacked {
			t.Fatalf("accepted a store of format version %d; this shoal reads %d and %d", m.Version, chunkstore.FormatVersion, chunkstore.FormatPacked)
		}
		if _, err := chunk.ParseIdentity(m.Chunker); err != nil {
			t.Fatalf("accepted an unknown chunker %q", m.Chunker)
		}
	})
}
