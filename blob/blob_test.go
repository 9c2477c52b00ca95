package blob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/shoal-nix/shoal"
)

func TestOpenURL(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		url     string
		want    string // String() of the backend; "" when an error is expected
		wantErr string
	}{
		{url: "file://" + dir, want: "file://" + dir},
		{url: "file://" + dir + "/", want: "file://" + dir},
		{url: dir, want: "file://" + dir},
		{url: "http://127.0.0.1:8080", want: "http://127.0.0.1:8080"},
		{url: "http://127.0.0.1:8080/", want: "http://127.0.0.1:8080"},
		{url: "https://cache.example/prefix/", want: "https://cache.example/prefix"},
		{url: "", wantErr: "empty"},
		{url: "s3://bucket", want: "s3://bucket"},
		{url: "ftp://host/x", wantErr: "unsupported store URL scheme"},
		{url: "file://host/dir", wantErr: "empty host"},
		{url: "file://" + dir + "?compression=xz", wantErr: "query"},
		{url: "http:///nohost", wantErr: "no host"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			b, err := Open(tt.url, nil)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Open(%q) error = %v, want one containing %q", tt.url, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open(%q): %v", tt.url, err)
			}
			if got := b.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestOpenRelativePath(t *testing.T) {
	b, err := Open("some/rel/dir", nil)
	if err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if want := "file://" + filepath.ToSlash(filepath.Join(wd, "some/rel/dir")); b.String() != want {
		t.Errorf("String() = %q, want %q", b.String(), want)
	}
}

func TestValidateKey(t *testing.T) {
	tests := []struct {
		key string
		ok  bool
	}{
		{"nix-cache-info", true},
		{"abc.narinfo", true},
		{"nar/xyz.nar.xz", true},
		{"chunks/ab/abcdef", true},
		{"", false},
		{"/etc/passwd", false},
		{"..", false},
		{"../x", false},
		{"nar/../../x", false},
		{"nar/..", false},
		{"./x", false},
		{"nar\\x", false},
		{"nar//x", false},
		{"nar/", false},
		{"a\x00b", false},
		{"..foo", true},
	}
	for _, tt := range tests {
		err := ValidateKey(tt.key)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateKey(%q) = %v, want ok=%v", tt.key, err, tt.ok)
		}
	}
}

// TestTraversalRejected checks every backend operation refuses keys that
// would escape the root, and that nothing is written outside it.
func TestTraversalRejected(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "store")
	b, err := Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(parent, "secret")
	if err := os.WriteFile(secret, []byte("s"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("request reached the server: %s", r.URL)
	}))
	defer srv.Close()
	hb, err := Open(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, be := range []Backend{b, hb} {
		for _, key := range []string{"../secret", "/etc/passwd", "a/../../secret", "a\\..\\secret", ""} {
			if _, err := be.Open(ctx, key); err == nil || errors.Is(err, shoal.ErrNotFound) {
				t.Errorf("%s: Open(%q) error = %v, want a key error", be, key, err)
			}
			if _, err := be.Exists(ctx, key); err == nil {
				t.Errorf("%s: Exists(%q) succeeded", be, key)
			}
			if err := be.Put(ctx, key, []byte("x")); err == nil {
				t.Errorf("%s: Put(%q) succeeded", be, key)
			}
		}
	}
	if err := b.List(ctx, "../", func(string) error { return nil }); err == nil {
		t.Error("List(\"../\") succeeded")
	}
	data, err := os.ReadFile(secret)
	if err != nil || string(data) != "s" {
		t.Errorf("file outside the root changed: %q, %v", data, err)
	}
}

func TestFilePutOpen(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	b, err := Open("file://"+root, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		key  string
		data []byte
	}{
		{"nix-cache-info", []byte("StoreDir: /nix/store\n")},
		{"nar/abc.nar.xz", bytes.Repeat([]byte{0xfd, 0x37}, 70000)},
		{"chunks/ab/abcdef", nil},
		{"deep/er/and/deeper/x", []byte("x")},
	}
	for _, tt := range tests {
		if ok, err := b.Exists(ctx, tt.key); err != nil || ok {
			t.Fatalf("Exists(%q) before Put = %v, %v", tt.key, ok, err)
		}
		if _, err := b.Open(ctx, tt.key); !errors.Is(err, shoal.ErrNotFound) {
			t.Fatalf("Open(%q) before Put: %v, want shoal.ErrNotFound", tt.key, err)
		}
		if err := b.Put(ctx, tt.key, tt.data); err != nil {
			t.Fatalf("Put(%q): %v", tt.key, err)
		}
		if ok, err := b.Exists(ctx, tt.key); err != nil || !ok {
			t.Fatalf("Exists(%q) after Put = %v, %v", tt.key, ok, err)
		}
		got, err := ReadAll(ctx, b, tt.key, 1<<20)
		if err != nil {
			t.Fatalf("ReadAll(%q): %v", tt.key, err)
		}
		if !bytes.Equal(got, tt.data) {
			t.Errorf("ReadAll(%q) returned %d bytes, want %d", tt.key, len(got), len(tt.data))
		}
		st, err := os.Stat(filepath.Join(root, filepath.FromSlash(tt.key)))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o044 != 0o044 {
			t.Errorf("%s has mode %v, want group/other readable", tt.key, st.Mode())
		}
	}
	// Overwriting replaces the whole object.
	if err := b.Put(ctx, "nar/abc.nar.xz", []byte("short")); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadAll(ctx, b, "nar/abc.nar.xz", 100); err != nil || string(got) != "short" {
		t.Errorf("after overwrite: %q, %v", got, err)
	}
	// A directory is not an object.
	if ok, err := b.Exists(ctx, "chunks/ab"); err != nil || ok {
		t.Errorf("Exists(directory) = %v, %v", ok, err)
	}
	if _, err := b.Open(ctx, "chunks/ab"); !errors.Is(err, shoal.ErrNotFound) {
		t.Errorf("Open(directory) = %v, want shoal.ErrNotFound", err)
	}
	assertNoTempFiles(t, root)
}

func assertNoTempFiles(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), tempPrefix) {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestFilePutConcurrentSameKey(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	b, err := Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	const writers = 16
	const size = 256 << 10
	payload := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, size) }
	var wg sync.WaitGroup
	stop := make(chan struct{})
	readerErr := make(chan error, 1)
	// A reader polls the key throughout: it must see nothing or a whole
	// object written by exactly one writer, never a mix or a prefix.
	go func() {
		defer close(readerErr)
		for {
			select {
			case <-stop:
				return
			default:
			}
			data, err := ReadAll(ctx, b, "chunks/ab/key", size*2)
			if errors.Is(err, shoal.ErrNotFound) {
				continue
			}
			if err != nil {
				readerErr <- err
				return
			}
			if len(data) != size || !bytes.Equal(data, bytes.Repeat(data[:1], size)) {
				readerErr <- fmt.Errorf("reader saw a torn object of %d bytes", len(data))
				return
			}
		}
	}()
	errs := make(chan error, writers)
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- b.Put(ctx, "chunks/ab/key", payload(i))
		}(i)
	}
	wg.Wait()
	close(stop)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Put: %v", err)
		}
	}
	if err := <-readerErr; err != nil {
		t.Error(err)
	}
	data, err := ReadAll(ctx, b, "chunks/ab/key", size)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, bytes.Repeat(data[:1], size)) {
		t.Error("final object is a mix of writers")
	}
	assertNoTempFiles(t, root)
}

func TestFileList(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	b, err := Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Chosen so that per-directory order differs from key order: "a-c"
	// sorts before "a/b" because '-' < '/'.
	keys := []string{"a/b", "a-c", "a0", "nar/x.nar", "nar/y.nar", "b.narinfo", "chunks/ab/01", "chunks/ab/02", "chunks/cd/03", "chunks/c", "z"}
	for _, k := range keys {
		if err := b.Put(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	// A stray temporary file must not be listed.
	if err := os.WriteFile(filepath.Join(root, "nar", tempPrefix+"junk"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", []string{"a-c", "a/b", "a0", "b.narinfo", "chunks/ab/01", "chunks/ab/02", "chunks/c", "chunks/cd/03", "nar/x.nar", "nar/y.nar", "z"}},
		{"chunks/", []string{"chunks/ab/01", "chunks/ab/02", "chunks/c", "chunks/cd/03"}},
		{"chunks/c", []string{"chunks/c", "chunks/cd/03"}},
		{"chunks/ab/", []string{"chunks/ab/01", "chunks/ab/02"}},
		{"chunks/ab/02", []string{"chunks/ab/02"}},
		{"a", []string{"a-c", "a/b", "a0"}},
		{"nar", []string{"nar/x.nar", "nar/y.nar"}},
		{"missing/", nil},
		{"missing/deeper/", nil},
	}
	for _, tt := range tests {
		var got []string
		if err := b.List(ctx, tt.prefix, func(k string) error { got = append(got, k); return nil }); err != nil {
			t.Fatalf("List(%q): %v", tt.prefix, err)
		}
		if strings.Join(got, " ") != strings.Join(tt.want, " ") {
			t.Errorf("List(%q) = %q, want %q", tt.prefix, got, tt.want)
		}
	}
	// fn's error stops the walk and is returned as-is.
	stopErr := errors.New("stop")
	n := 0
	err = b.List(ctx, "", func(string) error { n++; return stopErr })
	if !errors.Is(err, stopErr) || n != 1 {
		t.Errorf("List with failing fn: err=%v after %d calls", err, n)
	}
	// A store directory that does not exist yet holds no keys.
	empty, err := Open(filepath.Join(root, "not-yet"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := empty.List(ctx, "", func(k string) error { t.Errorf("unexpected key %q", k); return nil }); err != nil {
		t.Errorf("List on missing root: %v", err)
	}
}

func TestReadAllLimit(t *testing.T) {
	ctx := context.Background()
	b, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "k", make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		max     int64
		wantErr bool
	}{{100, false}, {1000, false}, {99, true}, {0, true}, {-1, true}}
	for _, tt := range tests {
		data, err := ReadAll(ctx, b, "k", tt.max)
		if (err != nil) != tt.wantErr {
			t.Errorf("ReadAll(max=%d) error = %v, wantErr %v", tt.max, err, tt.wantErr)
		}
		if err == nil && len(data) != 100 {
			t.Errorf("ReadAll(max=%d) returned %d bytes", tt.max, len(data))
		}
		if err != nil && tt.max >= 0 && !strings.Contains(err.Error(), "larger than") {
			t.Errorf("ReadAll(max=%d) error %q does not explain the limit", tt.max, err)
		}
	}
	if _, err := ReadAll(ctx, b, "absent", 10); !errors.Is(err, shoal.ErrNotFound) {
		t.Errorf("ReadAll(absent) = %v, want shoal.ErrNotFound", err)
	}
}

func TestHTTPBackend(t *testing.T) {
	objects := map[string]string{
		"/cache/nix-cache-info":  "StoreDir: /nix/store\n",
		"/cache/nar/abc.nar.xz":  "xzdata",
		"/cache/chunks/ab/a%20b": "escaped",
		"/cache/forbidden":       "",
		"/cache/gone":            "",
		"/cache/broken":          "",
		"/cache/teapot":          "",
		"/cache/redirect":        "",
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.EscapedPath() {
		case "/cache/forbidden":
			http.Error(w, "AccessDenied", http.StatusForbidden)
			return
		case "/cache/gone":
			w.WriteHeader(http.StatusGone)
			return
		case "/cache/broken":
			http.Error(w, "backend exploded", http.StatusInternalServerError)
			return
		case "/cache/teapot":
			w.WriteHeader(http.StatusTeapot)
			return
		case "/cache/redirect":
			http.Redirect(w, r, "/cache/nar/abc.nar.xz", http.StatusFound)
			return
		}
		body, ok := objects[r.URL.EscapedPath()]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		if r.Method == http.MethodGet {
			io.WriteString(w, body)
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	b, err := Open(srv.URL+"/cache/", srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		key        string
		want       string
		exists     bool
		notFound   bool
		errContain string
	}{
		{key: "nix-cache-info", want: "StoreDir: /nix/store\n", exists: true},
		{key: "nar/abc.nar.xz", want: "xzdata", exists: true},
		{key: "chunks/ab/a b", want: "escaped", exists: true},
		{key: "redirect", want: "xzdata", exists: true},
		{key: "missing.narinfo", notFound: true, errContain: "404"},
		{key: "forbidden", notFound: true, errContain: "403"},
		{key: "gone", notFound: true, errContain: "410"},
		{key: "broken", errContain: "500"},
		{key: "teapot", errContain: "418"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			got, err := ReadAll(ctx, b, tt.key, 1<<10)
			if tt.errContain == "" {
				if err != nil {
					t.Fatalf("ReadAll: %v", err)
				}
				if string(got) != tt.want {
					t.Errorf("ReadAll = %q, want %q", got, tt.want)
				}
			} else {
				if err == nil {
					t.Fatal("ReadAll succeeded, want error")
				}
				if errors.Is(err, shoal.ErrNotFound) != tt.notFound {
					t.Errorf("errors.Is(%v, shoal.ErrNotFound) = %v, want %v", err, !tt.notFound, tt.notFound)
				}
				if !strings.Contains(err.Error(), tt.errContain) || !strings.Contains(err.Error(), srv.URL) {
					t.Errorf("error %q should mention status %s and the URL", err, tt.errContain)
				}
			}
			ok, err := b.Exists(ctx, tt.key)
			if tt.errContain != "" && !tt.notFound {
				if err == nil {
					t.Errorf("Exists = %v, nil; want an error for status %s", ok, tt.errContain)
				}
				return
			}
			if err != nil || ok != tt.exists {
				t.Errorf("Exists = %v, %v; want %v", ok, err, tt.exists)
			}
		})
	}
	if err := b.Put(ctx, "x", nil); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Put = %v, want ErrReadOnly", err)
	}
	if err := b.List(ctx, "", func(string) error { return nil }); !errors.Is(err, ErrNotSupported) {
		t.Errorf("List = %v, want ErrNotSupported", err)
	}
}

func TestHTTPContextCancel(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	b, err := Open(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Open(ctx, "x"); !errors.Is(err, context.Canceled) {
		t.Errorf("Open with cancelled context = %v, want context.Canceled", err)
	}
}
