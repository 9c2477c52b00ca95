package nixtest

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// narinfo reads the narinfo of path from a file:// cache directory as key -> value.
func narinfo(t *testing.T, cacheDir, path string) map[string]string {
	t.Helper()
	hash, _, _ := strings.Cut(strings.TrimPrefix(path, "/nix/store/"), "-")
	b, err := os.ReadFile(filepath.Join(cacheDir, hash+".narinfo"))
	if err != nil {
		t.Fatalf("reading the narinfo of %s: %v", path, err)
	}
	fields := map[string]string{}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), ": ")
		fields[k] = v
	}
	return fields
}

// signedPaths makes two versions of a package in e, signed with a new key.
func signedPaths(t *testing.T, e *Env) (paths []string, publicKey string) {
	t.Helper()
	sk, pk := e.GenerateKey(t, "nixtest-1")
	for v := range 2 {
		paths = append(paths, e.AddPath(t, "demo-"+versionName(v), PackageVersion(11, v, 96<<10)))
	}
	if paths[0] == paths[1] {
		t.Fatalf("two versions gave one store path %s", paths[0])
	}
	e.Sign(t, sk, paths...)
	return paths, pk
}

func TestCopyThroughCaches(t *testing.T) {
	e := NewEnv(t)
	paths, pk := signedPaths(t, e)
	tests := []struct {
		compression string
		ext         string
	}{
		{"xz", ".nar.xz"},
		{"zstd", ".nar.zst"},
	}
	for _, tt := range tests {
		t.Run(tt.compression, func(t *testing.T) {
			cache := t.TempDir()
			e.CopyToCache(t, cache, tt.compression, paths...)
			for _, p := range paths {
				ni := narinfo(t, cache, p)
				if ni["Compression"] != tt.compression || !strings.HasSuffix(ni["URL"], tt.ext) {
					t.Errorf("%s: narinfo says Compression %q URL %q, want %s and *%s", p, ni["Compression"], ni["URL"], tt.compression, tt.ext)
				}
				if want := e.NarHash(t, p); ni["NarHash"] != want {
					t.Errorf("%s: narinfo NarHash %q, store says %q", p, ni["NarHash"], want)
				}
				if _, ok := ni["CA"]; ok || !strings.HasPrefix(ni["Sig"], "nixtest-1:") {
					t.Errorf("%s: want an input-addressed path signed by nixtest-1, narinfo has CA %q Sig %q", p, ni["CA"], ni["Sig"])
				}
			}
			root := filepath.Join(t.TempDir(), "root")
			if _, err := e.CopyFrom(t.Context(), "file://"+cache, pk, root, paths...); err != nil {
				t.Fatalf("copy from the %s cache: %v", tt.compression, err)
			}
			if _, err := e.Verify(t.Context(), root, paths...); err != nil {
				t.Fatalf("verify after copy: %v", err)
			}
		})
	}
}

func TestCopyFromRefusals(t *testing.T) {
	e := NewEnv(t)
	paths, pk := signedPaths(t, e)
	cache := t.TempDir()
	e.CopyToCache(t, cache, "zstd", paths...)
	_, wrongKey := e.GenerateKey(t, "other-1")
	if wrongKey == pk {
		t.Fatal("two generated keys are equal")
	}

	out, err := e.CopyFrom(t.Context(), "file://"+cache, wrongKey, filepath.Join(t.TempDir(), "root"), paths[0])
	if err == nil {
		t.Fatalf("copy trusting only another key succeeded:\n%s", out)
	}
	if !strings.Contains(out, "lacks a valid signature") {
		t.Errorf("copy with the wrong key failed for another reason than the signature:\n%s", out)
	}

	// Content-addressed paths need no signature at all: Nix checks them by their hash.
	ca := e.AddContentAddressed(t, "demo-ca", PackageVersion(12, 0, 4<<10))
	caCache := t.TempDir()
	e.CopyToCache(t, caCache, "none", ca)
	if _, ok := narinfo(t, caCache, ca)["CA"]; !ok {
		t.Errorf("narinfo of %s has no CA line", ca)
	}
	root := filepath.Join(t.TempDir(), "root")
	if out, err := e.CopyFrom(t.Context(), "file://"+caCache, wrongKey, root, ca); err != nil {
		t.Errorf("unsigned content-addressed path was refused: %v\n%s", err, out)
	}
}

func TestVerifyCatchesCorruption(t *testing.T) {
	e := NewEnv(t)
	paths, pk := signedPaths(t, e)
	cache := t.TempDir()
	e.CopyToCache(t, cache, "bzip2", paths[0])
	root := filepath.Join(t.TempDir(), "root")
	if _, err := e.CopyFrom(t.Context(), "file://"+cache, pk, root, paths[0]); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(root, paths[0], "share/doc/NEWS")
	if err := os.Chmod(f, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f, []byte("tampered\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := e.Verify(t.Context(), root, paths[0]); err == nil {
		t.Fatalf("verify accepted a changed file:\n%s", out)
	}
}

func TestVerifyWantsATrustedSignature(t *testing.T) {
	e := NewEnv(t)
	paths, pk := signedPaths(t, e)
	cache := t.TempDir()
	e.CopyToCache(t, cache, "zstd", paths[0])
	root := filepath.Join(t.TempDir(), "root")
	if _, err := e.CopyFrom(t.Context(), "file://"+cache, pk, root, paths[0]); err != nil {
		t.Fatal(err)
	}
	// Another Env has not generated the key, so it must find the path untrusted.
	if out, err := NewEnv(t).Verify(t.Context(), root, paths[0]); err == nil || !strings.Contains(out, "untrusted") {
		t.Fatalf("verify without the signing key trusted: err %v\n%s", err, out)
	}
}

func TestCopyFromHTTP(t *testing.T) {
	e := NewEnv(t)
	paths, pk := signedPaths(t, e)
	cache := t.TempDir()
	e.CopyToCache(t, cache, "zstd", paths...)
	var requests atomic.Int64
	files := http.FileServer(http.Dir(cache))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		files.ServeHTTP(w, r)
	}))
	defer srv.Close()

	root := filepath.Join(t.TempDir(), "root")
	if out, err := e.CopyFrom(t.Context(), srv.URL, pk, root, paths...); err != nil {
		t.Fatalf("copy over http: %v\n%s", err, out)
	}
	if _, err := e.Verify(t.Context(), root, paths...); err != nil {
		t.Fatal(err)
	}
	if requests.Load() < 1+2*int64(len(paths)) {
		t.Errorf("Nix made %d requests, want at least nix-cache-info plus a narinfo and a NAR per path", requests.Load())
	}
}

func TestRunRejectsNonNixProgram(t *testing.T) {
	e := NewEnv(t)
	if _, err := e.Run(t.Context(), "copy", "--to", "file:///nowhere"); err == nil {
		t.Error("Run accepted a Nix subcommand as the program")
	}
	if out, err := e.Run(t.Context(), "nix", "show-config"); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(out, "require-sigs = true") || !strings.Contains(out, "substituters = \n") {
		t.Errorf("isolated configuration not in effect:\n%s", out)
	}
}
