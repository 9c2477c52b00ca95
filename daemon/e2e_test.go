package daemon_test

import (
	"context"
	"crypto/sha256"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/nixtest"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

// countingServer serves a directory over HTTP and records every request and the body
// bytes sent, so tests can prove what crossed the wire.
type countingServer struct {
	*httptest.Server
	mu    sync.Mutex
	bytes map[string]int64 // by first path element: "nar", "chunks", "manifests", "narinfo"
	gets  map[string]int   // by full path
	down  bool
}

func newCountingServer(t *testing.T, dir string) *countingServer {
	cs := &countingServer{bytes: map[string]int64{}, gets: map[string]int{}}
	fs := http.FileServer(http.Dir(dir))
	cs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cs.mu.Lock()
		down := cs.down
		if r.Method == http.MethodGet {
			cs.gets[r.URL.Path]++
		}
		cs.mu.Unlock()
		if down {
			http.Error(w, "down for the test", http.StatusServiceUnavailable)
			return
		}
		cw := &countingWriter{ResponseWriter: w}
		fs.ServeHTTP(cw, r)
		kind := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 2)[0]
		if strings.HasSuffix(kind, ".narinfo") {
			kind = "narinfo"
		}
		cs.mu.Lock()
		cs.bytes[kind] += cw.n
		cs.mu.Unlock()
	}))
	t.Cleanup(cs.Close)
	return cs
}

func (cs *countingServer) sent(kind string) int64 {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.bytes[kind]
}

func (cs *countingServer) setDown(down bool) {
	cs.mu.Lock()
	cs.down = down
	cs.mu.Unlock()
}

// chunkGets returns the chunk IDs requested so far and how often.
func (cs *countingServer) chunkGets() map[string]int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := map[string]int{}
	for p, n := range cs.gets {
		if strings.HasPrefix(p, "/chunks/") {
			out[p[strings.LastIndexByte(p, '/')+1:]] += n
		}
	}
	return out
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

// fixture is a signed xz binary cache of a few store paths, published into a chunk
// store, both served over HTTP.
type fixture struct {
	env      *nixtest.Env
	pk       string
	sk       string
	paths    map[string]string // name -> store path
	cacheDir string
	storeDir string
	upstream *countingServer
	store    *countingServer
}

func newFixture(t *testing.T) *fixture {
	env := nixtest.NewEnv(t)
	f := &fixture{env: env, paths: map[string]string{}, cacheDir: t.TempDir(), storeDir: t.TempDir()}
	f.sk, f.pk = env.GenerateKey(t, "shoal-test-1")
	// Two versions of a package as an upgrade, and a small unrelated path.
	for name, files := range map[string]map[string][]byte{
		"demo-1.0": nixtest.PackageVersion(7, 1, 3<<20),
		"demo-1.1": nixtest.PackageVersion(7, 2, 3<<20),
		"notes":    {"README": []byte("a small path that is one chunk\n")},
	} {
		f.paths[name] = env.AddPath(t, name, files)
	}
	all := f.all()
	env.Sign(t, f.sk, all...)
	env.CopyToCache(t, f.cacheDir, "xz", all...)
	f.publish(t, f.pk)
	f.upstream = newCountingServer(t, f.cacheDir)
	f.store = newCountingServer(t, f.storeDir)
	return f
}

func (f *fixture) all() []string {
	var out []string
	for _, p := range f.paths {
		out = append(out, p)
	}
	return out
}

func (f *fixture) publish(t *testing.T, keys ...string) publish.Summary {
	t.Helper()
	return f.publishTo(t, f.storeDir, publish.Options{}, keys...)
}

// publishTo publishes every path of the fixture's cache into the store at storeURL,
// trusting keys; opts' zero fields take the defaults.
func (f *fixture) publishTo(t *testing.T, storeURL string, opts publish.Options, keys ...string) publish.Summary {
	t.Helper()
	ctx := context.Background()
	src, err := blob.Open(f.cacheDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := chunkstore.Open(storeURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := nixcache.ParseKeyring(keys)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Params == (chunk.Params{}) {
		opts.Params = chunk.DefaultParams()
	}
	if opts.Jobs == 0 {
		opts.Jobs = 2
	}
	p, err := publish.New(nixcache.NewBinaryCache(src), dst, kr, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var hps []string
	for _, sp := range f.all() {
		hp, _ := nixcache.ParseHashPart(sp)
		hps = append(hps, hp)
	}
	sum, err := p.Run(ctx, hps)
	if err != nil {
		t.Fatalf("publish to %s: %v", storeURL, err)
	}
	return sum
}

// narInfo reads a path's narinfo from the xz cache.
func (f *fixture) narInfo(t *testing.T, name string) *nixcache.NarInfo {
	t.Helper()
	hp, _ := nixcache.ParseHashPart(f.paths[name])
	raw, err := os.ReadFile(filepath.Join(f.cacheDir, hp+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := nixcache.ParseNarInfo(raw)
	if err != nil {
		t.Fatal(err)
	}
	return ni
}

// startDaemon runs a daemon on a loopback port until the test ends.
func startDaemon(t *testing.T, cfg daemon.Config) (*daemon.Daemon, string) {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	d, err := daemon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
		d.Close()
	})
	return d, "http://" + ln.Addr().String()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func (f *fixture) copyAndVerify(t *testing.T, url string, names ...string) {
	t.Helper()
	ctx := context.Background()
	root := t.TempDir()
	var paths []string
	for _, n := range names {
		paths = append(paths, f.paths[n])
	}
	// Each copy gets its own Env, and so its own narinfo disk cache.
	env := nixtest.NewEnv(t)
	if out, err := env.CopyFrom(ctx, url, f.pk, root, paths...); err != nil {
		t.Fatalf("nix copy %v from %s: %v\n%s", names, url, err, out)
	}
	if out, err := env.Run(ctx, append([]string{"nix", "store", "verify", "--store", root, "--option", "trusted-public-keys", f.pk}, paths...)...); err != nil {
		t.Fatalf("nix store verify: %v\n%s", err, out)
	}
}

func TestNixSubstitutesThroughDaemon(t *testing.T) {
	f := newFixture(t)
	d, url := startDaemon(t, daemon.Config{
		StoreURL:    f.store.URL,
		Upstreams:   []string{f.upstream.URL},
		TrustedKeys: []string{f.pk},
	})

	// Cold: the first version and the small path.
	f.copyAndVerify(t, url, "demo-1.0", "notes")
	v1 := f.narInfo(t, "demo-1.0")
	notes := f.narInfo(t, "notes")
	// Everything fetched counts, manifests included: a cold fetch must not cost more
	// than the upstream's own compressed NARs.
	cold := f.store.sent("chunks") + f.store.sent("manifests") + f.upstream.sent("nar")
	coldLimit := int64(v1.FileSize + notes.FileSize)
	t.Logf("cold fetch: %d chunk bytes + %d whole-NAR bytes; xz NARs are %d bytes", f.store.sent("chunks"), f.upstream.sent("nar"), coldLimit)
	if cold > coldLimit {
		t.Errorf("cold fetch cost %d bytes, more than the upstream's xz NARs (%d)", cold, coldLimit)
	}

	// Upgrade: only chunks the daemon does not hold, and never more than the whole NAR.
	beforeChunks, beforeNar := f.store.sent("chunks"), f.upstream.sent("nar")
	before := f.store.chunkGets()
	f.copyAndVerify(t, url, "demo-1.1")
	v2 := f.narInfo(t, "demo-1.1")
	upgrade := f.store.sent("chunks") - beforeChunks + f.upstream.sent("nar") - beforeNar
	t.Logf("upgrade manifest: %d bytes", f.store.sent("manifests"))

	m1 := readManifest(t, f.storeDir, v1.NarHash)
	m2 := readManifest(t, f.storeDir, v2.NarHash)
	held := map[chunk.ID]bool{}
	for _, e := range m1.Entries {
		held[e.ID] = true
	}
	var newBytes int64
	seen := map[chunk.ID]bool{}
	for _, e := range m2.Entries {
		if !held[e.ID] && !seen[e.ID] {
			seen[e.ID] = true
			newBytes += int64(e.StoredSize)
		}
	}
	limit := min(newBytes, int64(v2.FileSize))
	t.Logf("upgrade: %d bytes over the wire; new chunks %d bytes; xz NAR %d bytes", upgrade, newBytes, v2.FileSize)
	if upgrade > limit {
		t.Errorf("upgrade cost %d bytes, more than min(new chunks %d, whole NAR %d)", upgrade, newBytes, v2.FileSize)
	}
	for id, n := range f.store.chunkGets() {
		if before[id] > 0 && n > before[id] {
			t.Errorf("chunk %s fetched again during the upgrade", id)
		}
		if n > 1 {
			t.Errorf("chunk %s fetched %d times", id, n)
		}
	}
	if len(m2.Entries) < 4 || len(seen) == len(m2.Entries) {
		t.Fatalf("fixture does not exercise dedup: %d chunks, %d new", len(m2.Entries), len(seen))
	}

	// A second client gets everything from the daemon's cache.
	beforeChunks, beforeNar = f.store.sent("chunks"), f.upstream.sent("nar")
	f.copyAndVerify(t, url, "demo-1.0", "demo-1.1", "notes")
	if extra := f.store.sent("chunks") - beforeChunks + f.upstream.sent("nar") - beforeNar; extra != 0 {
		t.Errorf("warm copy fetched %d bytes; want 0", extra)
	}
	if d.Metrics().Bytes("store")+d.Metrics().Bytes("upstream") == 0 {
		t.Error("daemon metrics recorded no fetched bytes")
	}
}

func readManifest(t *testing.T, storeDir string, narHash [32]byte) *manifest.Manifest {
	t.Helper()
	s, err := chunkstore.Open(storeDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := s.Manifest(context.Background(), narHash)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestHTTPProtocol(t *testing.T) {
	f := newFixture(t)
	_, url := startDaemon(t, daemon.Config{
		StoreURL:    f.store.URL,
		Upstreams:   []string{f.upstream.URL},
		TrustedKeys: []string{f.pk},
		Priority:    25,
	})
	ni := f.narInfo(t, "demo-1.0")
	narURL := "/nar/" + manifest.Key(ni.NarHash) + ".nar"
	tests := []struct {
		name, method, path, rangeHdr string
		status                       int
		check                        func(t *testing.T, resp *http.Response, body []byte)
	}{
		{name: "cache info", method: "GET", path: "/nix-cache-info", status: 200, check: func(t *testing.T, _ *http.Response, body []byte) {
			if string(body) != "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 25\n" {
				t.Errorf("nix-cache-info = %q", body)
			}
		}},
		{name: "unknown narinfo", method: "GET", path: "/00000000000000000000000000000000.narinfo", status: 404},
		{name: "narinfo HEAD", method: "HEAD", path: "/" + ni.HashPart() + ".narinfo", status: 200},
		{name: "narinfo", method: "GET", path: "/" + ni.HashPart() + ".narinfo", status: 200, check: func(t *testing.T, _ *http.Response, body []byte) {
			got, err := nixcache.ParseNarInfo(body)
			if err != nil {
				t.Fatal(err)
			}
			if got.URL != strings.TrimPrefix(narURL, "/") || got.Compression != "none" {
				t.Errorf("URL %q Compression %q", got.URL, got.Compression)
			}
			kr, _ := nixcache.ParseKeyring([]string{f.pk})
			if _, err := kr.Verify(got); err != nil {
				t.Errorf("rewritten narinfo no longer verifies: %v", err)
			}
		}},
		{name: "NAR HEAD", method: "HEAD", path: narURL, status: 200, check: func(t *testing.T, resp *http.Response, _ []byte) {
			if resp.ContentLength != int64(ni.NarSize) || resp.Header.Get("Accept-Ranges") != "bytes" {
				t.Errorf("Content-Length %d Accept-Ranges %q", resp.ContentLength, resp.Header.Get("Accept-Ranges"))
			}
		}},
		{name: "NAR", method: "GET", path: narURL, status: 200, check: func(t *testing.T, resp *http.Response, body []byte) {
			if sha256.Sum256(body) != ni.NarHash || uint64(len(body)) != ni.NarSize {
				t.Errorf("NAR body does not match NarHash")
			}
			if resp.Header.Get("Content-Encoding") != "" {
				t.Errorf("Content-Encoding %q", resp.Header.Get("Content-Encoding"))
			}
		}},
		{name: "NAR range", method: "GET", path: narURL, rangeHdr: "bytes=100000-", status: 206, check: func(t *testing.T, _ *http.Response, body []byte) {
			if uint64(len(body)) != ni.NarSize-100000 {
				t.Errorf("range body %d bytes", len(body))
			}
		}},
		{name: "unknown NAR", method: "GET", path: "/nar/" + strings.Repeat("0", 52) + ".nar", status: 404},
		{name: "other", method: "GET", path: "/nar/x.nar.xz", status: 404},
	}
	var whole []byte
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, url+tc.path, nil)
			if tc.rangeHdr != "" {
				req.Header.Set("Range", tc.rangeHdr)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.name == "NAR" {
				whole = body
			}
			if tc.name == "NAR range" && whole != nil && string(body) != string(whole[100000:]) {
				t.Error("range body differs from the whole NAR's tail")
			}
			if tc.check != nil {
				tc.check(t, resp, body)
			}
		})
	}
}

func TestRefusesNarInfoWithoutTrustedSignature(t *testing.T) {
	f := newFixture(t)
	// A daemon that trusts another key must refuse every narinfo, and Nix gets 404s.
	_, otherPK := f.env.GenerateKey(t, "someone-else-1")
	_, url := startDaemon(t, daemon.Config{
		StoreURL:    f.store.URL,
		Upstreams:   []string{f.upstream.URL},
		TrustedKeys: []string{otherPK},
	})
	ni := f.narInfo(t, "notes")
	resp, err := http.Get(url + "/" + ni.HashPart() + ".narinfo")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("narinfo signed by an untrusted key: status %d, want 404", resp.StatusCode)
	}
	root := t.TempDir()
	if out, err := nixtest.NewEnv(t).CopyFrom(context.Background(), url, f.pk, root, f.paths["notes"]); err == nil {
		t.Fatalf("nix copy succeeded through a daemon that trusts no key of the cache:\n%s", out)
	}
}

// corruptChunks replaces every chunk object of the NAR with a valid zstd frame of other
// bytes, as a broken or hostile store would serve.
func corruptChunks(t *testing.T, storeDir string, narHash [32]byte) {
	t.Helper()
	m := readManifest(t, storeDir, narHash)
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	for i, e := range m.Entries {
		wrong := make([]byte, e.Size)
		wrong[0] = byte(i)
		p := filepath.Join(storeDir, filepath.FromSlash(chunkstore.ChunkKey(e.ID)))
		if err := os.WriteFile(p, codec.Encode(nil, wrong), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCorruptStoreNeverYieldsWrongBody(t *testing.T) {
	f := newFixture(t)
	ni := f.narInfo(t, "demo-1.0")
	corruptChunks(t, f.storeDir, ni.NarHash)
	_, url := startDaemon(t, daemon.Config{
		StoreURL:    f.store.URL,
		Upstreams:   []string{f.upstream.URL},
		TrustedKeys: []string{f.pk},
	})
	narURL := url + "/nar/" + manifest.Key(ni.NarHash) + ".nar"

	// Upstream down: nothing correct can be had, so no 200 may complete.
	f.upstream.setDown(true)
	mustGet(t, url+"/"+ni.HashPart()+".narinfo", 200) // the store has the narinfo
	resp, err := http.Get(narURL)
	if err == nil {
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 && rerr == nil {
			t.Fatalf("corrupt store and dead upstream produced a complete 200 (%d bytes, hash ok: %v)", len(body), sha256.Sum256(body) == ni.NarHash)
		}
		if resp.StatusCode != 404 && resp.StatusCode != 200 {
			t.Errorf("status %d, want 404", resp.StatusCode)
		}
	}

	// Upstream back: the daemon falls back to the whole NAR and Nix gets a correct path.
	f.upstream.setDown(false)
	f.copyAndVerify(t, url, "demo-1.0")
	if f.upstream.sent("nar") == 0 {
		t.Error("expected the whole NAR from the upstream after the store's chunks failed their checks")
	}
}

func TestUnreachableStoreFallsBackToUpstream(t *testing.T) {
	f := newFixture(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there any more
	_, url := startDaemon(t, daemon.Config{
		StoreURL:    dead,
		Upstreams:   []string{f.upstream.URL},
		TrustedKeys: []string{f.pk},
	})
	f.copyAndVerify(t, url, "demo-1.0", "notes")
	if f.upstream.sent("nar") == 0 {
		t.Error("no NAR bytes came from the upstream")
	}
}

func TestNoStoreChunksWholeNARs(t *testing.T) {
	f := newFixture(t)
	d, url := startDaemon(t, daemon.Config{
		Upstreams:   []string{f.upstream.URL},
		TrustedKeys: []string{f.pk},
	})
	f.copyAndVerify(t, url, "demo-1.0")
	first := f.upstream.sent("nar")
	// Served again from the daemon's own chunks: no new upstream NAR bytes.
	f.copyAndVerify(t, url, "demo-1.0")
	if f.upstream.sent("nar") != first {
		t.Errorf("second copy fetched %d more NAR bytes from the upstream", f.upstream.sent("nar")-first)
	}
	_ = d
}

func mustGet(t *testing.T, url string, status int) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("GET %s: status %d, want %d: %s", url, resp.StatusCode, status, body)
	}
	return body
}
