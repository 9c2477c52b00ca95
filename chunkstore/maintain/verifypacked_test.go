package maintain

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/publish"
)

// packedFixture publishes two releases of a package (the second with deltas) and an
// unrelated NAR to a packed store in a directory.
func packedFixture(t *testing.T) (f *fixture, dir string, a, b string) {
	t.Helper()
	dir = t.TempDir()
	f = newFixture(t, dir)
	v1 := testkit.RandomBytes(61, 120<<10)
	a = f.add(t, "pkg-1.0", v1)
	b = f.add(t, "pkg-1.1", release(v1, 3, 2000))
	c := f.add(t, "other-1", testkit.RandomBytes(62, 50<<10))
	sum := f.publishWith(t, publish.Options{Params: smallParams, Jobs: 2, Deltas: true, Layout: chunkstore.FormatPacked, PackSize: 64 << 10}, a, b, c)
	if sum.Deltas == 0 || sum.Packs < 2 {
		t.Fatalf("publish: %+v", sum)
	}
	return f, dir, a, b
}

func TestVerifyPacked(t *testing.T) {
	ctx := context.Background()
	packFiles := func(t *testing.T, dir, suffix string) []string {
		files, _ := filepath.Glob(filepath.Join(dir, "packs", "*", "*"+suffix))
		if len(files) == 0 {
			t.Fatal("no pack files")
		}
		return files
	}
	tests := []struct {
		name   string
		damage func(t *testing.T, f *fixture, dir, a, b string)
		want   []string // each in some problem; none: a clean store
	}{
		{"clean", nil, nil},
		{"a flipped byte in a pack", func(t *testing.T, f *fixture, dir, a, b string) {
			p := packFiles(t, dir, ".pack")[0]
			data, _ := os.ReadFile(p)
			data[len(data)/2] ^= 1
			os.WriteFile(p, data, 0o644)
		}, []string{"its index describes"}},
		{"a pack file gone", func(t *testing.T, f *fixture, dir, a, b string) {
			os.Remove(packFiles(t, dir, ".pack")[0])
		}, []string{"has an index but no pack file"}},
		{"a location that lies", func(t *testing.T, f *fixture, dir, a, b string) {
			m, _, err := f.store.Manifest(ctx, f.nis[a].NarHash)
			if err != nil {
				t.Fatal(err)
			}
			m.Locs[0].Offset += 1
			if err := f.store.PutManifest(ctx, m); err != nil {
				t.Fatal(err)
			}
		}, []string{"chunk object of entry 0", "holds no such object"}},
		{"a manifest that says nowhere", func(t *testing.T, f *fixture, dir, a, b string) {
			m, _, err := f.store.Manifest(ctx, f.nis[a].NarHash)
			if err != nil {
				t.Fatal(err)
			}
			m.Packs, m.Locs = nil, nil
			if err := f.store.PutManifest(ctx, m); err != nil {
				t.Fatal(err)
			}
		}, []string{"version 1 in a packed store"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, dir, a, b := packedFixture(t)
			if tc.damage != nil {
				tc.damage(t, f, dir, a, b)
			}
			rep, problems, err := Verify(ctx, f.store, VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			joined := strings.Join(rep.Problems, "\n")
			if tc.want == nil {
				if problems != 0 || rep.Packs == 0 || rep.Chunks == 0 || rep.Deltas == 0 || rep.Manifests != 3 {
					t.Fatalf("clean packed store: %+v, %d problems", rep, problems)
				}
				return
			}
			for _, w := range tc.want {
				if !strings.Contains(joined, w) {
					t.Errorf("problems lack %q:\n%s", w, joined)
				}
			}
		})
	}
}

// TestPackedStoreOnEveryBackend publishes a packed store into a directory and into
// MinIO, and verifies it there: pack writes, index listing and ranged reads of deltas
// and base chunks against a real S3 server.
func TestPackedStoreOnEveryBackend(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, open(t))
			v1 := testkit.RandomBytes(71, 120<<10)
			a := f.add(t, "pkg-1.0", v1)
			b := f.add(t, "pkg-1.1", release(v1, 3, 2000))
			sum := f.publishWith(t, publish.Options{Params: smallParams, Jobs: 2, Deltas: true, Layout: chunkstore.FormatPacked, PackSize: 64 << 10}, a, b)
			if sum.Packs < 2 || sum.Deltas == 0 {
				t.Fatalf("publish: %+v", sum)
			}
			rep, problems, err := Verify(context.Background(), f.store, VerifyOptions{})
			if err != nil || problems != 0 || rep.Packs != int(sum.Packs) || rep.Deltas == 0 {
				t.Fatalf("verify: %+v, %d problems, %v", rep, problems, err)
			}
		})
	}
}
