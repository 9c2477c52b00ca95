package nixstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/internal/nixtest"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
)

// tree describes a test directory: path -> contents, with "->target" for a symlink,
// a trailing "/" for an empty directory and a "*" suffix on the name for an executable.
type tree map[string]string

func writeTree(t *testing.T, root string, tr tree) {
	t.Helper()
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range tr {
		mode := os.FileMode(0o644)
		if n, ok := cutSuffix(name, "*"); ok {
			name, mode = n, 0o755
		}
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case len(name) > 0 && name[len(name)-1] == '/':
			err := os.MkdirAll(p, 0o755)
			if err != nil {
				t.Fatal(err)
			}
		case len(data) > 2 && data[:2] == "->":
			if err := os.Symlink(data[2:], p); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(p, []byte(data), mode); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func cutSuffix(s, suf string) (string, bool) {
	if len(s) >= len(suf) && s[len(s)-len(suf):] == suf {
		return s[:len(s)-len(suf)], true
	}
	return s, false
}

func nixDump(t *testing.T, path string) []byte {
	t.Helper()
	out, err := exec.Command("nix-store", "--dump", path).Output()
	if err != nil {
		t.Fatalf("nix-store --dump %s: %v", path, err)
	}
	return out
}

// TestLayoutMatchesNixStoreDump checks the serializer byte for byte against Nix's own,
// and that any byte range read through the layout is that range of Nix's NAR.
func TestLayoutMatchesNixStoreDump(t *testing.T) {
	nixtest.Require(t)
	big := string(bytes.Repeat([]byte("0123456789abcdef"), 20000)) + "tail"
	tests := []struct {
		name string
		tree tree
		file bool // the root is the single file "f"
	}{
		{"single file", tree{"f": "hello\n"}, true},
		{"empty file", tree{"f": ""}, true},
		{"executable file", tree{"f*": "#!/bin/sh\n"}, true},
		{"symlink root", tree{"f": "->somewhere/else"}, true},
		{"nested tree", tree{
			"bin/tool*":      "binary",
			"lib/libx.so":    big,
			"lib/libx.so.1":  "->libx.so",
			"share/empty/":   "",
			"share/doc/NEWS": "news 1234567",
			"share/z":        "",
			"A":              "upper case sorts first",
			"a-b":            "dash",
			"a.b":            "dot",
			"a_b":            "underscore",
			"padding7":       "1234567",
			"padding8":       "12345678",
			"padding9":       "123456789",
		}, false},
		{"empty directory", tree{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "root")
			writeTree(t, root, tc.tree)
			path := root
			if tc.file {
				path = filepath.Join(root, "f")
			}
			want := nixDump(t, path)
			l, err := NewLayout(path)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(l.Reader())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) || l.Size != uint64(len(want)) {
				t.Fatalf("NAR differs from nix-store --dump: %d bytes (size %d), want %d", len(got), l.Size, len(want))
			}
			for _, r := range [][2]int{{0, 1}, {3, 40}, {len(want) / 3, len(want) / 2}, {len(want) - 5, 5}, {0, len(want)}} {
				off, n := r[0], min(r[1], len(want)-r[0])
				buf := make([]byte, n)
				if _, err := l.ReadAt(buf, int64(off)); err != nil {
					t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
				}
				if !bytes.Equal(buf, want[off:off+n]) {
					t.Fatalf("ReadAt(%d, %d) differs from the NAR", off, n)
				}
			}
		})
	}
}

func TestLayoutRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	if err := exec.Command("mkfifo", filepath.Join(dir, "fifo")).Run(); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	if _, err := NewLayout(dir); err == nil {
		t.Fatal("a FIFO was serialized; Nix refuses it")
	}
}

func openCache(t *testing.T) *localcache.Cache {
	t.Helper()
	c, err := localcache.Open(filepath.Join(t.TempDir(), "cache.db"), localcache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newStore(t *testing.T, c *localcache.Cache, opts Options) *Store {
	t.Helper()
	s, err := New(c, chunk.DefaultParams(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// cut returns the chunks of data as the daemon cuts them.
func cut(t *testing.T, data []byte) [][]byte {
	t.Helper()
	c, err := chunk.NewChunker(bytes.NewReader(data), chunk.DefaultParams())
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for {
		b, err := c.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, bytes.Clone(b))
	}
}

// TestSeedRealStorePath indexes a path Nix built, serves each of its chunks, and then
// catches a modification of the path: the chunk over the changed bytes is refused and
// its location dropped, and the path can no longer be indexed.
func TestSeedRealStorePath(t *testing.T) {
	env := nixtest.NewEnv(t)
	seed := time.Now().UnixNano() // a fresh path: this test modifies it
	path := env.AddPath(t, "seedtest-1.0.0", nixtest.PackageVersion(seed, 0, 600_000))
	c := openCache(t)
	s := newStore(t, c, Options{})
	ctx := context.Background()

	res, err := s.Seed(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	nar := nixDump(t, path)
	chunks := cut(t, nar)
	if !res.Indexed || res.NarSize != uint64(len(nar)) || res.Chunks != len(chunks) {
		t.Fatalf("Seed = %+v, want indexed, %d bytes, %d chunks", res, len(nar), len(chunks))
	}
	if again, err := s.Seed(ctx, path); err != nil || again.Indexed {
		t.Fatalf("second Seed = %+v, %v; want no re-indexing", again, err)
	}
	ids := make([]chunk.ID, len(chunks))
	for i, data := range chunks {
		ids[i] = chunk.Sum(data)
		obj, err := s.Chunk(ctx, manifest.Entry{ID: ids[i], Size: uint32(len(data))})
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		if !bytes.Equal(obj.Raw, data) {
			t.Fatalf("chunk %d: object does not hold the chunk's bytes", i)
		}
	}
	held, err := s.Holds(append(ids, chunk.Sum([]byte("not there"))))
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range held {
		if h != (i < len(ids)) {
			t.Fatalf("Holds[%d] = %v", i, h)
		}
	}

	// Overwrite the middle of the library in place, as a stray tool might, and put it
	// back afterwards so the store path stays valid for Nix.
	lib := filepath.Join(path, "lib", "libdemo.so")
	orig, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(lib, orig, 0o444); err != nil {
			t.Errorf("restoring %s: %v", lib, err)
		}
	})
	bad := bytes.Clone(orig)
	for i := len(bad) / 2; i < len(bad)/2+100; i++ {
		bad[i] ^= 0xff
	}
	if err := os.WriteFile(lib, bad, 0o444); err != nil {
		t.Fatal(err)
	}
	libOff := bytes.Index(nar, orig[:4096])
	hit := -1
	var off int
	for i, data := range chunks {
		if off <= libOff+len(orig)/2 && libOff+len(orig)/2 < off+len(data) {
			hit = i
		}
		off += len(data)
	}
	if libOff < 0 || hit < 0 {
		t.Fatal("test bug: the modified range is in no chunk")
	}
	if _, err := s.Chunk(ctx, manifest.Entry{ID: ids[hit]}); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("modified chunk: err = %v, want ErrNotFound", err)
	}
	if _, err := c.ChunkLocation(ids[hit]); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("the modified chunk's location was kept: %v", err)
	}
	if _, err := s.Chunk(ctx, manifest.Entry{ID: ids[0]}); err != nil {
		t.Fatalf("an unmodified chunk of the same path: %v", err)
	}
	if _, err := s.Seed(ctx, path); err == nil {
		t.Fatal("a modified path was indexed again")
	}
}

func TestSeedRefuses(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, filepath.Join(dir, "00000000000000000000000000000000-x-1.0"), tree{"f": "data"})
	notValid := func(context.Context, string) ([32]byte, error) { return [32]byte{}, ErrNotValid }
	wrongHash := func(context.Context, string) ([32]byte, error) { return [32]byte{1}, nil }
	tests := []struct {
		name string
		path string
		hash func(context.Context, string) ([32]byte, error)
	}{
		{"outside the store", "/etc/hostname", wrongHash},
		{"nested in a store path", filepath.Join(dir, "00000000000000000000000000000000-x-1.0", "f"), wrongHash},
		{"not valid", filepath.Join(dir, "00000000000000000000000000000000-x-1.0"), notValid},
		{"hash differs from the registration", filepath.Join(dir, "00000000000000000000000000000000-x-1.0"), wrongHash},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := openCache(t)
			s := newStore(t, c, Options{Dir: dir, RegisteredHash: tc.hash})
			if res, err := s.Seed(context.Background(), tc.path); err == nil {
				t.Fatalf("Seed = %+v, want an error", res)
			}
			if _, err := c.Seeded(tc.path); !errors.Is(err, shoal.ErrNotFound) {
				t.Fatalf("a refused path was recorded as seeded: %v", err)
			}
		})
	}
}

func TestRelated(t *testing.T) {
	dir := t.TempDir()
	h := func(i int) string { return fmt.Sprintf("%032d", i) }
	names := []string{"go-1.25.0", "go-1.25.3", "go-1.25.10", "go-1.26.0", "go-1.25.3-doc", "gopls-0.16", "go-1.25.0.drv", "hello-2.12"}
	for i, n := range names {
		writeTree(t, filepath.Join(dir, h(i)+"-"+n), tree{"f": n})
	}
	s := newStore(t, openCache(t), Options{Dir: dir})
	tests := []struct {
		path string
		max  int
		want []string
	}{
		{h(3) + "-go-1.26.0", 3, []string{h(2) + "-go-1.25.10", h(1) + "-go-1.25.3", h(0) + "-go-1.25.0"}},
		{h(3) + "-go-1.26.0", 1, []string{h(2) + "-go-1.25.10"}},
		{h(9) + "-go-1.27.0-doc", 2, []string{h(4) + "-go-1.25.3-doc"}},
		{h(9) + "-go-1.27.0-src", 2, nil},
		{h(9) + "-hello-2.13", 3, []string{h(7) + "-hello-2.12"}},
		{h(9) + "-unversioned", 3, nil},
		{h(9) + "-absent-1.0", 3, nil},
	}
	for _, tc := range tests {
		got, err := s.Related(filepath.Join(dir, tc.path), tc.max)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, w := range tc.want {
			want = append(want, filepath.Join(dir, w))
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("Related(%s, %d) = %v, want %v", tc.path, tc.max, got, want)
		}
	}
}
