package nixcache

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
)

type cachedPath struct {
	hashPart string
	nar      []byte
}

// writeTestCache lays out dir the way `nix copy --to file://DIR` does:
// nix-cache-info and <hash>.narinfo at the root, compressed NARs under
// nar/ named after their FileHash, narinfos signed with sk.
func writeTestCache(t *testing.T, dir string, sk signature.SecretKey) []cachedPath {
	t.Helper()
	write := func(name string, data []byte) {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("nix-cache-info", []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"))
	hashParts := []string{"0bcv91i8fahqghn8dmyr791iaycbsjdd", "1bcv91i8fahqghn8dmyr791iaycbsjdd", "2bcv91i8fahqghn8dmyr791iaycbsjdd", "3bcv91i8fahqghn8dmyr791iaycbsjdd"}
	compressions := []string{"xz", "zstd", "none", "-"} // "-": no Compression line, bzip2
	var out []cachedPath
	for i, h := range hashParts {
		var nar, file []byte
		ext := ""
		switch compressions[i] {
		case "xz":
			nar = narLike(300<<10, uint64(10+i))
			file, ext = xzAny(t, nar), ".xz"
		case "zstd":
			nar = narLike(300<<10, uint64(10+i))
			file, ext = zstdEnc(t, nar), ".zst"
		case "none":
			nar = narLike(300<<10, uint64(10+i))
			file = nar
		case "-":
			var err error
			if nar, err = os.ReadFile("testdata/fixture.txt"); err != nil {
				t.Fatal(err)
			}
			if file, err = os.ReadFile("testdata/fixture.txt.bz2"); err != nil {
				t.Fatal(err)
			}
			ext = ".bz2"
		}
		narSum := sha256.Sum256(nar)
		fileSum := sha256.Sum256(file)
		fileHash := nixbase32.EncodeToString(fileSum[:])
		url := "nar/" + fileHash + ".nar" + ext
		write(url, file)
		n := &NarInfo{
			StorePath:  "/nix/store/" + h + "-pkg-" + strconv.Itoa(i),
			NarHash:    narSum,
			NarSize:    uint64(len(nar)),
			References: []string{h + "-pkg-" + strconv.Itoa(i)},
		}
		sig, err := sk.Sign(rand.Reader, n.Fingerprint())
		if err != nil {
			t.Fatal(err)
		}
		lines := []string{"StorePath: " + n.StorePath, "URL: " + url}
		if compressions[i] != "-" {
			lines = append(lines, "Compression: "+compressions[i])
		}
		lines = append(lines,
			"FileHash: sha256:"+fileHash, "FileSize: "+strconv.Itoa(len(file)),
			"NarHash: "+n.NarHashString(), "NarSize: "+strconv.Itoa(len(nar)),
			"References: "+strings.Join(n.References, " "), "Deriver: "+h+"-pkg.drv", "Sig: "+sig.String())
		write(h+".narinfo", minimal(lines...))
		out = append(out, cachedPath{hashPart: h, nar: nar})
	}
	// Things List must skip.
	write("not-a-hash.narinfo", []byte("x"))
	write("nar/"+hashParts[0]+".narinfo", []byte("x"))
	return out
}

func TestBinaryCache(t *testing.T) {
	sk, pk, err := signature.GenerateKeypair("test-cache-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := ParseKeyring([]string{pk.String()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	paths := writeTestCache(t, dir, sk)
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer srv.Close()

	fileBackend, err := blob.Open("file://"+dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	httpBackend, err := blob.Open(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		b       blob.Backend
		canList bool
	}{
		{"file", fileBackend, true},
		{"http", httpBackend, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewBinaryCache(tc.b)
			if c.String() != tc.b.String() {
				t.Errorf("String() = %q", c.String())
			}
			for _, p := range paths {
				n, err := c.NarInfo(ctx, p.hashPart)
				if err != nil {
					t.Fatalf("NarInfo(%s): %v", p.hashPart, err)
				}
				if _, err := kr.Verify(n); err != nil {
					t.Errorf("Verify: %v", err)
				}
				rc, err := c.OpenNAR(ctx, n)
				if err != nil {
					t.Fatalf("OpenNAR(%s): %v", p.hashPart, err)
				}
				got, err := io.ReadAll(NewVerifyingReader(rc, n.NarHash, n.NarSize))
				rc.Close()
				if err != nil {
					t.Fatalf("reading NAR of %s (%s): %v", p.hashPart, n.EffectiveCompression(), err)
				}
				if len(got) != len(p.nar) {
					t.Errorf("NAR of %s: %d bytes, want %d", p.hashPart, len(got), len(p.nar))
				}
			}
			_, err := c.NarInfo(ctx, "9bcv91i8fahqghn8dmyr791iaycbsjdd")
			if !errors.Is(err, shoal.ErrNotFound) || !errors.Is(err, shoal.ErrNotFound) {
				t.Errorf("NarInfo(missing) = %v, want shoal.ErrNotFound", err)
			}
			if _, err := c.NarInfo(ctx, "../etc/passwd"); err == nil || errors.Is(err, shoal.ErrNotFound) {
				t.Errorf("NarInfo(bad hash) = %v, want a validation error", err)
			}
			var listed []string
			err = c.List(ctx, func(h string) error { listed = append(listed, h); return nil })
			if !tc.canList {
				if !errors.Is(err, blob.ErrNotSupported) {
					t.Errorf("List = %v, want ErrNotSupported", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, p := range paths {
				want = append(want, p.hashPart)
			}
			if strings.Join(listed, " ") != strings.Join(want, " ") {
				t.Errorf("List = %q, want %q", listed, want)
			}
		})
	}
}

func TestBinaryCacheBadData(t *testing.T) {
	sk, _, err := signature.GenerateKeypair("test-cache-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	paths := writeTestCache(t, dir, sk)
	b, err := blob.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := NewBinaryCache(b)
	ctx := context.Background()
	h := paths[1].hashPart // zstd

	// A narinfo stored under another path's name is refused.
	raw, err := os.ReadFile(filepath.Join(dir, paths[0].hashPart+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, h+".narinfo"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NarInfo(ctx, h); err == nil || !strings.Contains(err.Error(), "describes") {
		t.Errorf("NarInfo for a swapped narinfo = %v", err)
	}
	// A corrupt narinfo is a parse error, not a miss.
	if err := os.WriteFile(filepath.Join(dir, h+".narinfo"), []byte("StorePath: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NarInfo(ctx, h); err == nil || errors.Is(err, shoal.ErrNotFound) || !strings.Contains(err.Error(), "parsing") {
		t.Errorf("NarInfo for a corrupt narinfo = %v", err)
	}

	n, err := c.NarInfo(ctx, paths[2].hashPart)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		edit    func(n NarInfo) NarInfo
		wantErr func(error) bool
	}{
		{"NAR missing", func(n NarInfo) NarInfo { n.URL = "nar/gone.nar"; return n }, func(err error) bool { return errors.Is(err, shoal.ErrNotFound) }},
		{"NAR URL escapes the cache", func(n NarInfo) NarInfo { n.URL = "../secret"; return n }, func(err error) bool { return err != nil && !errors.Is(err, shoal.ErrNotFound) }},
		{"absolute NAR URL", func(n NarInfo) NarInfo { n.URL = "https://elsewhere/nar/x.nar"; return n }, func(err error) bool { return err != nil }},
		{"unknown compression", func(n NarInfo) NarInfo { n.Compression = "lz4"; return n }, func(err error) bool { return err != nil && strings.Contains(err.Error(), "lz4") }},
	}
	for _, tt := range tests {
		m := tt.edit(*n)
		rc, err := c.OpenNAR(ctx, &m)
		if err == nil {
			rc.Close()
		}
		if !tt.wantErr(err) {
			t.Errorf("%s: OpenNAR error = %v", tt.name, err)
		}
	}
	// Wrong bytes behind a right URL are caught by the verifying reader.
	if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(n.URL)), []byte("tampered"), 0o644); err != nil {
		t.Fatal(err)
	}
	rc, err := c.OpenNAR(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadAll(NewVerifyingReader(rc, n.NarHash, n.NarSize)); !errors.Is(err, ErrNarMismatch) {
		t.Errorf("tampered NAR: %v, want ErrNarMismatch", err)
	}
}
