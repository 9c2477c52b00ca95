package chunkstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
)

func samplePack(n int) ([]byte, *chunkstore.PackIndex) {
	var pb chunkstore.PackBuilder
	for i := range n {
		obj := bytes.Repeat([]byte{byte(i)}, 100+i*37)
		kind := chunkstore.KindChunk
		if i%3 == 2 {
			kind = chunkstore.KindDelta
		}
		pb.Add(kind, chunk.Sum(obj), obj)
	}
	return pb.Seal()
}

func TestPackRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, err := chunkstore.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	data, x := samplePack(10)
	if err := s.PutPack(ctx, data, x); err != nil {
		t.Fatal(err)
	}
	got, err := s.PackIndex(ctx, x.Pack)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(x) {
		t.Fatalf("index round trip:\n got %+v\nwant %+v", got, x)
	}
	for i, o := range got.Objects {
		rc, err := s.Backend().OpenRange(ctx, chunkstore.PackKey(x.Pack), int64(o.Offset), int64(o.Length))
		if err != nil {
			t.Fatal(err)
		}
		obj, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || chunk.Sum(obj) != o.ID {
			t.Fatalf("object %d at its offset: %v, or other bytes", i, err)
		}
	}
	var ids []chunk.ID
	if err := s.PackIndexes(ctx, func(id chunk.ID) error { ids = append(ids, id); return nil }); err != nil || len(ids) != 1 || ids[0] != x.Pack {
		t.Fatalf("PackIndexes = %v, %v", ids, err)
	}
	inv, err := s.Inventory(ctx)
	if err != nil || len(inv.Packs) != 1 || len(inv.PackIndexes) != 1 || len(inv.Chunks) != 0 {
		t.Fatalf("Inventory = %+v, %v", inv, err)
	}
	if err := s.PutPack(ctx, data[1:], x); err == nil {
		t.Error("PutPack accepted bytes its index does not describe")
	}
}

func TestParsePackIndexRejects(t *testing.T) {
	_, x := samplePack(4)
	good, err := x.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := chunkstore.ParsePackIndex(good); err != nil {
		t.Fatal(err)
	}
	for n := range len(good) {
		if _, err := chunkstore.ParsePackIndex(good[:n]); err == nil {
			t.Fatalf("accepted %d of %d bytes", n, len(good))
		}
	}
	for i := range good {
		bad := bytes.Clone(good)
		bad[i] ^= 1
		if _, err := chunkstore.ParsePackIndex(bad); err == nil {
			t.Fatalf("accepted byte %d ^ 1", i)
		}
	}
	tests := []struct {
		name string
		edit func(x *chunkstore.PackIndex)
		want string
	}{
		{"unknown kind", func(x *chunkstore.PackIndex) { x.Objects[1].Kind = 7 }, "unknown kind 7"},
		{"gap", func(x *chunkstore.PackIndex) { x.Objects[2].Offset++ }, "want a non-empty object at"},
		{"empty object", func(x *chunkstore.PackIndex) { x.Objects[3].Length = 0 }, "non-empty"},
		{"size", func(x *chunkstore.PackIndex) { x.Size++ }, "cover"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, x := samplePack(4)
			tc.edit(x)
			if _, err := x.MarshalBinary(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("MarshalBinary = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestPackIndexMustNameItsPack(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := chunkstore.Open(dir, nil)
	data, x := samplePack(3)
	if err := s.PutPack(ctx, data, x); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, filepath.FromSlash(chunkstore.PackIndexKey(x.Pack))))
	other := chunk.Sum([]byte("other"))
	os.MkdirAll(filepath.Dir(filepath.Join(dir, filepath.FromSlash(chunkstore.PackIndexKey(other)))), 0o755)
	if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(chunkstore.PackIndexKey(other))), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PackIndex(ctx, other); err == nil || !strings.Contains(err.Error(), "names pack") {
		t.Fatalf("PackIndex of a copied index = %v", err)
	}
	if _, err := s.PackIndex(ctx, chunk.Sum([]byte("absent"))); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("PackIndex of an absent pack = %v", err)
	}
}

func TestPackKeys(t *testing.T) {
	id := chunk.Sum([]byte("pack"))
	h := id.String()
	if got := chunkstore.PackKey(id); got != "packs/"+h[:2]+"/"+h+".pack" {
		t.Errorf("PackKey = %q", got)
	}
	for key, ok := range map[string]bool{
		chunkstore.PackKey(id):                  true,
		chunkstore.PackIndexKey(id):             false,
		"packs/" + h + ".pack":                  false,
		"packs/zz/" + h + ".pack":               false,
		chunkstore.PackKey(id) + ".tmp":         false,
		strings.ToUpper(chunkstore.PackKey(id)): false,
	} {
		if got, parsed := chunkstore.ParsePackKey(key); parsed != ok || (ok && got != id) {
			t.Errorf("ParsePackKey(%q) = %v, want %v", key, parsed, ok)
		}
	}
	if got, ok := chunkstore.ParsePackIndexKey(chunkstore.PackIndexKey(id)); !ok || got != id {
		t.Errorf("ParsePackIndexKey round trip = %v, %v", got, ok)
	}
}

func TestInitLayout(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	tests := []struct {
		name          string
		first, second int // layouts asked for; 0: the store's
		wantVersion   int
		wantErr       string
	}{
		{"default", 0, 0, chunkstore.FormatVersion, ""},
		{"packed", chunkstore.FormatPacked, 0, chunkstore.FormatPacked, ""},
		{"packed twice", chunkstore.FormatPacked, chunkstore.FormatPacked, chunkstore.FormatPacked, ""},
		{"packed onto loose", 0, chunkstore.FormatPacked, 0, "has layout 1, not 3"},
		{"loose onto packed", chunkstore.FormatPacked, chunkstore.FormatVersion, 0, "has layout 3, not 1"},
		{"unknown", 2, 0, 0, "store layout 2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := chunkstore.Open(t.TempDir(), nil)
			_, err := s.Init(ctx, "file:///cache", chunk.DefaultParams(), chunkstore.Mode{Layout: tc.first}, now)
			if err == nil {
				var m *chunkstore.Meta
				m, err = s.Init(ctx, "file:///cache", chunk.DefaultParams(), chunkstore.Mode{Layout: tc.second}, now)
				if err == nil && m.Version != tc.wantVersion {
					t.Fatalf("version %d, want %d", m.Version, tc.wantVersion)
				}
			}
			if tc.wantErr == "" && err != nil {
				t.Fatal(err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Init = %v, want an error containing %q", err, tc.wantErr)
			}
			if err == nil {
				m, err := s.Meta(ctx)
				if err != nil || m.Version != tc.wantVersion || m.Packed() != (tc.wantVersion == chunkstore.FormatPacked) {
					t.Fatalf("Meta = %+v, %v", m, err)
				}
			}
		})
	}
}

func TestInitDeltaPrimary(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	packed := chunkstore.Mode{Layout: chunkstore.FormatPacked}
	dp := func(k int) chunkstore.Mode {
		return chunkstore.Mode{Layout: chunkstore.FormatPacked, DeltaPrimary: true, MaxChain: k}
	}
	tests := []struct {
		name          string
		first, second chunkstore.Mode
		wantDP        bool
		wantMaxChain  int
		wantErr       string
	}{
		{"new, default bound", dp(0), chunkstore.Mode{}, true, chunkstore.DefaultMaxChain, ""},
		{"new, own bound, kept", dp(3), chunkstore.Mode{}, true, 3, ""},
		{"same bound again", dp(3), dp(3), true, 3, ""},
		{"the mode without asking for it", dp(3), chunkstore.Mode{DeltaPrimary: true}, true, 3, ""},
		{"another bound", dp(3), dp(4), false, 0, "chains of at most 3, not 4"},
		{"packed store becomes delta-primary", packed, dp(2), true, 2, ""},
		{"packed store stays plain", packed, chunkstore.Mode{}, false, 0, ""},
		{"bound on a plain store", packed, chunkstore.Mode{MaxChain: 2}, false, 0, "not delta-primary"},
		{"loose store", chunkstore.Mode{}, chunkstore.Mode{DeltaPrimary: true}, false, 0, "only a packed store"},
		{"new store without layout 3", chunkstore.Mode{DeltaPrimary: true}, chunkstore.Mode{}, false, 0, "a delta-primary store is a packed one"},
		{"bound too deep", dp(chunkstore.MaxChainLimit + 1), chunkstore.Mode{}, false, 0, "chain bound"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := chunkstore.Open(t.TempDir(), nil)
			_, err := s.Init(ctx, "file:///cache", chunk.DefaultParams(), tc.first, now)
			if err == nil {
				_, err = s.Init(ctx, "file:///cache", chunk.DefaultParams(), tc.second, now)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Init = %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m, err := s.Meta(ctx)
			if err != nil || m.DeltaPrimary != tc.wantDP || m.MaxChain != tc.wantMaxChain {
				t.Fatalf("Meta = %+v, %v; want delta-primary %v, bound %d", m, err, tc.wantDP, tc.wantMaxChain)
			}
		})
	}
}
