package daemon_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
)

// A fault is what a broken, overloaded or hostile HTTP server does instead of serving a
// file. Each one wraps the honest answer, so a row can say where the fault applies.
type fault func(w http.ResponseWriter, r *http.Request, body []byte, release <-chan struct{})

func statusFault(code int) fault {
	return func(w http.ResponseWriter, _ *http.Request, _ []byte, _ <-chan struct{}) {
		if code == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		http.Error(w, http.StatusText(code)+" (injected)", code)
	}
}

// garbage answers 200 with as many random-looking bytes as the real object has.
func garbage(w http.ResponseWriter, _ *http.Request, body []byte, _ <-chan struct{}) {
	junk := noise(uint64(len(body)), len(body))
	w.Header().Set("Content-Length", strconv.Itoa(len(junk)))
	_, _ = w.Write(junk)
}

// shortLength declares and sends fewer bytes than the object has: the client sees a
// complete, well-formed response with a wrong body.
func shortLength(w http.ResponseWriter, _ *http.Request, body []byte, _ <-chan struct{}) {
	n := len(body) * 3 / 4
	w.Header().Set("Content-Length", strconv.Itoa(n))
	_, _ = w.Write(body[:n])
}

// hijackHalf declares the full length, sends half the body and drops the connection:
// gracefully (truncated) or with a TCP reset.
func hijackHalf(reset bool) fault {
	return func(w http.ResponseWriter, _ *http.Request, body []byte, _ <-chan struct{}) {
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: application/octet-stream\r\n\r\n", len(body))
		_, _ = buf.Write(body[:len(body)/2])
		_ = buf.Flush()
		if tc, ok := conn.(*net.TCPConn); ok && reset {
			_ = tc.SetLinger(0)
		}
	}
}

// stall sends half the body, then nothing, keeping the connection open.
func stall(w http.ResponseWriter, r *http.Request, body []byte, release <-chan struct{}) {
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body[:len(body)/2])
	w.(http.Flusher).Flush()
	select {
	case <-release:
	case <-r.Context().Done():
	}
}

// slow sends the whole body correctly, in small pieces with pauses.
func slow(w http.ResponseWriter, _ *http.Request, body []byte, _ <-chan struct{}) {
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	for len(body) > 0 {
		n := min(len(body), 16<<10)
		if _, err := w.Write(body[:n]); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		body = body[n:]
		time.Sleep(2 * time.Millisecond)
	}
}

// faultyServer serves dir, applying f to the paths match selects while it is on.
type faultyServer struct {
	*httptest.Server
	on      atomic.Bool
	hits    atomic.Int64
	release chan struct{}
}

func newFaultyServer(dir string, match func(path string) bool, f fault) *faultyServer {
	fs := &faultyServer{release: make(chan struct{})}
	files := http.FileServer(http.Dir(dir))
	fs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f == nil || match == nil || !fs.on.Load() || !match(r.URL.Path) {
			files.ServeHTTP(w, r)
			return
		}
		fs.hits.Add(1)
		body, err := os.ReadFile(dir + r.URL.Path)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		f(w, r, body, fs.release)
	}))
	return fs
}

func (fs *faultyServer) shutdown() {
	close(fs.release)
	fs.CloseClientConnections()
	fs.Close()
}

// edge is where a fault applies on one server, and which; a nil match: healthy.
type edge struct {
	match func(string) bool
	f     fault
}

// Where a fault applies.
var (
	anyPath  = func(string) bool { return true }
	chunks   = func(p string) bool { return strings.HasPrefix(p, "/chunks/") }
	manifsts = func(p string) bool { return strings.HasPrefix(p, "/manifests/") }
	narinfos = func(p string) bool { return strings.HasSuffix(p, ".narinfo") }
	nars     = func(p string) bool { return strings.HasPrefix(p, "/nar/") }
)

// faultCache is two versions of one package in a signed zstd cache, published into a
// chunk store: the second shares most chunks with the first, so once the first is
// local the daemon fetches the second as chunks.
type faultCache struct {
	cache    *cachetest.Cache
	storeDir string
	v1, v2   *nixcache.NarInfo
}

func newFaultCache(t *testing.T) *faultCache {
	c := cachetest.New(t, "faults-1")
	base := noise(11, 1<<20)
	next := bytes.Clone(base)
	copy(next[400<<10:], noise(12, 200<<10)) // a changed middle, as an upgrade has
	fc := &faultCache{cache: c}
	fc.v1 = c.Add(t, cachetest.HashPart("faults-1.0"), "faulty-1.0", base, "zstd")
	fc.v2 = c.Add(t, cachetest.HashPart("faults-1.1"), "faulty-1.1", next, "zstd")
	fc.storeDir = publishDir(t, c, fc.v1, fc.v2)
	return fc
}

// TestFaultMatrix puts one fault at one edge per row: the chunk store or an upstream
// answering errors, lying about lengths, sending garbage, dropping or stalling the
// connection. Every row must end with the correct NAR from another source or a clean
// 404, a log line saying what happened, and nothing left running.
func TestFaultMatrix(t *testing.T) {
	fc := newFaultCache(t)
	const (
		wantNAR = "NAR"
		want404 = "404"
		// The daemon refuses to start: Nix's connection is refused and it moves on.
		wantNoStart = "no start"
	)
	tests := []struct {
		name    string
		store   edge // the chunk store; nil match: healthy
		up1     edge // the first upstream
		second  bool // a healthy second upstream
		noStore bool
		want    string
		wantLog string
		narinfo int                                 // status of v2's narinfo; 0: 200
		disk    func(t *testing.T, stateDir string) // breaks the state directory
	}{
		// The store breaks while the upstream is fine: the whole NAR comes from it.
		{name: "store chunks 500", store: edge{chunks, statusFault(500)}, want: wantNAR, wantLog: "assembling from chunks failed; trying the whole NAR"},
		{name: "store chunks 404", store: edge{chunks, statusFault(404)}, want: wantNAR, wantLog: "assembling from chunks failed; trying the whole NAR"},
		{name: "store chunks 429 Retry-After", store: edge{chunks, statusFault(429)}, want: wantNAR, wantLog: "429 Too Many Requests"},
		{name: "store chunks garbage", store: edge{chunks, garbage}, want: wantNAR, wantLog: "chunk from source failed its check"},
		{name: "store chunks short Content-Length", store: edge{chunks, shortLength}, want: wantNAR, wantLog: "chunk from source failed its check"},
		{name: "store chunks truncated", store: edge{chunks, hijackHalf(false)}, want: wantNAR, wantLog: "unexpected EOF"},
		{name: "store chunks reset", store: edge{chunks, hijackHalf(true)}, want: wantNAR, wantLog: "trying the whole NAR"},
		{name: "store chunks stall", store: edge{chunks, stall}, want: wantNAR, wantLog: "response body stalled"},
		{name: "store chunks slow", store: edge{chunks, slow}, want: wantNAR, wantLog: `source=chunks`},
		{name: "store manifest 500", store: edge{manifsts, statusFault(500)}, want: wantNAR, wantLog: "store manifest unavailable"},
		{name: "store manifest garbage", store: edge{manifsts, garbage}, want: wantNAR, wantLog: "store manifest unavailable"},
		{name: "store manifest truncated", store: edge{manifsts, hijackHalf(false)}, want: wantNAR, wantLog: "store manifest unavailable"},
		{name: "store narinfo 503", store: edge{narinfos, statusFault(503)}, want: wantNAR, wantLog: "narinfo source failed"},
		{name: "store narinfo garbage", store: edge{narinfos, garbage}, want: wantNAR, wantLog: "narinfo source failed"},
		{name: "store narinfo short Content-Length", store: edge{narinfos, shortLength}, want: wantNAR, wantLog: "narinfo source failed"},
		// An upstream breaks while a second one is fine: the narinfo comes from that one.
		{name: "upstream narinfo 500, second upstream", noStore: true, up1: edge{narinfos, statusFault(500)}, second: true, want: wantNAR, wantLog: "narinfo source failed"},
		{name: "upstream narinfo 429, second upstream", noStore: true, up1: edge{narinfos, statusFault(429)}, second: true, want: wantNAR, wantLog: "429 Too Many Requests"},
		{name: "upstream narinfo garbage, second upstream", noStore: true, up1: edge{narinfos, garbage}, second: true, want: wantNAR, wantLog: "narinfo source failed"},
		{name: "upstream narinfo stall, second upstream", noStore: true, up1: edge{narinfos, stall}, second: true, want: wantNAR, wantLog: "response body stalled"},
		// The upstream's NAR breaks and nothing else has it: a clean 404, and Nix moves on
		// to its next substituter.
		{name: "upstream NAR 500, no store", noStore: true, up1: edge{nars, statusFault(500)}, want: want404, wantLog: "NAR unavailable"},
		{name: "upstream NAR garbage, no store", noStore: true, up1: edge{nars, garbage}, want: want404, wantLog: "NAR unavailable"},
		{name: "upstream NAR short Content-Length, no store", noStore: true, up1: edge{nars, shortLength}, want: want404, wantLog: "NAR unavailable"},
		{name: "upstream NAR reset, no store", noStore: true, up1: edge{nars, hijackHalf(true)}, want: want404, wantLog: "NAR unavailable"},
		{name: "upstream NAR stall, no store", noStore: true, up1: edge{nars, stall}, want: want404, wantLog: "response body stalled"},
		// Both the store's chunks and the upstream's NAR are broken.
		{name: "store chunks garbage, upstream NAR truncated", store: edge{chunks, garbage}, up1: edge{nars, hijackHalf(false)}, want: want404, wantLog: "NAR unavailable"},
		// The state directory fills up or turns read-only under a running daemon: every
		// source is healthy, but nothing can be kept. A clean 404 sends Nix on to its next
		// substituter; the log names the file system's error.
		{name: "state dir full", disk: diskFull, want: want404, wantLog: "no space left on device"},
		// A read-only state directory can't be remounted under an open cache file; it
		// happens at start (a unit's ReadOnlyPaths, a full-disk remount), and the daemon
		// must refuse to start with the reason rather than serve without a cache.
		{name: "state dir read-only at start", disk: readOnly, want: wantNoStart, wantLog: "read-only file system"},
		// Everything is down: the narinfo is a clean 404, never a 5xx.
		{name: "everything 503", store: edge{anyPath, statusFault(503)}, up1: edge{anyPath, statusFault(503)}, want: want404, narinfo: 404, wantLog: "narinfo source failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g0, fd0 := testkit.Resources(t)
			logs := runFault(t, fc, tc.store, tc.up1, tc.second, tc.noStore, tc.narinfo, tc.want, tc.disk)
			if !strings.Contains(logs, tc.wantLog) {
				t.Errorf("no log line contains %q:\n%s", tc.wantLog, logs)
			}
			testkit.Settle(t, g0, fd0)
		})
	}
}

// runFault serves v1 with every fault off (so the package is local and v2 is priced as
// chunks), then turns the faults on and asks for v2 as Nix would. It stops everything
// before returning the daemon's log.
func runFault(t *testing.T, fc *faultCache, store, up1 edge, second, noStore bool, narinfoStatus int, want string, disk func(*testing.T, string)) string {
	t.Helper()
	logs := &testkit.SyncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs)
		}
	})
	stateDir := t.TempDir()
	if disk != nil {
		smallFS(t, stateDir)
	}
	var servers []*faultyServer
	up := newFaultyServer(fc.cache.Dir, up1.match, up1.f)
	servers = append(servers, up)
	cfg := daemon.Config{
		StateDir:      stateDir,
		Upstreams:     []string{up.URL},
		TrustedKeys:   []string{fc.cache.PublicKey},
		LookupTimeout: 30 * time.Second,
		VerifyWait:    time.Minute,
		Logger:        slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if second {
		up2 := newFaultyServer(fc.cache.Dir, nil, nil)
		servers = append(servers, up2)
		cfg.Upstreams = append(cfg.Upstreams, up2.URL)
	}
	var st *faultyServer
	if !noStore {
		st = newFaultyServer(fc.storeDir, store.match, store.f)
		servers = append(servers, st)
		cfg.StoreURL = st.URL
	}
	if want == "no start" {
		disk(t, stateDir)
		d, err := daemon.New(cfg)
		if err == nil {
			d.Close()
			t.Fatal("the daemon started on a broken state directory")
		}
		for _, s := range servers {
			s.shutdown()
		}
		return err.Error()
	}
	transport := &http.Transport{}
	cfg.HTTPClient = &http.Client{Transport: blob.StallTimeout(transport, 500*time.Millisecond)}
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
	nix := &http.Transport{}
	client := &http.Client{Transport: nix}
	url := "http://" + ln.Addr().String()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
		if err := d.Close(); err != nil {
			t.Errorf("closing daemon: %v", err)
		}
		nix.CloseIdleConnections()
		transport.CloseIdleConnections()
		for _, s := range servers {
			s.shutdown()
		}
	}()

	if status, body, err := get(client, url+"/nar/"+manifest.Key(fc.v1.NarHash)+".nar", url+"/"+fc.v1.HashPart()+".narinfo"); err != nil || status != 200 || sha256.Sum256(body) != fc.v1.NarHash {
		t.Fatalf("first version, before any fault: status %d, err %v", status, err)
	}
	for _, s := range servers {
		s.on.Store(true)
	}
	if disk != nil {
		disk(t, stateDir)
	}
	status, body, err := get(client, url+"/nar/"+manifest.Key(fc.v2.NarHash)+".nar", url+"/"+fc.v2.HashPart()+".narinfo")
	switch {
	case narinfoStatus != 0:
		if status != narinfoStatus {
			t.Errorf("narinfo: status %d, want %d", status, narinfoStatus)
		}
	case want == "NAR":
		if err != nil || status != 200 {
			t.Errorf("NAR: status %d, err %v; want the correct NAR", status, err)
		} else if sha256.Sum256(body) != fc.v2.NarHash || uint64(len(body)) != fc.v2.NarSize {
			t.Errorf("NAR: a complete 200 with a wrong body (%d bytes)", len(body))
		}
	default:
		if err == nil && status == 200 {
			t.Errorf("NAR: a complete 200 (%d bytes, correct: %v); want a clean 404", len(body), sha256.Sum256(body) == fc.v2.NarHash)
		} else if status != 404 {
			t.Errorf("NAR: status %d, err %v; want 404", status, err)
		}
	}
	hits := int64(0)
	for _, s := range servers {
		hits += s.hits.Load()
	}
	if hits == 0 && disk == nil {
		t.Error("no request met the fault: the row tests nothing")
	}
	return logs.String()
}

// get asks for the narinfo and, if it is there, the NAR, as Nix does. It returns the
// first non-200 status, or the NAR's status and body.
func get(client *http.Client, narURL, narinfoURL string) (int, []byte, error) {
	resp, err := client.Get(narinfoURL)
	if err != nil {
		return 0, nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return resp.StatusCode, nil, nil
	}
	resp, err = client.Get(narURL)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// diskFull fills the state directory's file system to the last byte.
func diskFull(t *testing.T, dir string) {
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the state directory: %v", err)
			}
			return
		}
	}
}

// TestNixSubstitutesPastAStalledStore is the fault matrix's one row with a real Nix: the
// store sends half of each chunk and then nothing. Nix must still get a correct upgrade,
// from the upstream, well before its own stall timeout.
func TestNixSubstitutesPastAStalledStore(t *testing.T) {
	f := newFixture(t)
	st := newFaultyServer(f.storeDir, chunks, stall)
	defer st.shutdown()
	transport := &http.Transport{}
	defer transport.CloseIdleConnections()
	logs := &testkit.SyncBuffer{}
	_, url := startDaemon(t, daemon.Config{
		StoreURL:    st.URL,
		Upstreams:   []string{f.upstream.URL},
		TrustedKeys: []string{f.pk},
		HTTPClient:  &http.Client{Transport: blob.StallTimeout(transport, time.Second)},
		Logger:      slog.New(slog.NewTextHandler(logs, nil)),
	})
	f.copyAndVerify(t, url, "demo-1.0")
	st.on.Store(true)
	f.copyAndVerify(t, url, "demo-1.1")
	if st.hits.Load() == 0 {
		t.Fatal("the store was never asked for a chunk: the test tests nothing")
	}
	if !strings.Contains(logs.String(), "response body stalled") {
		t.Errorf("no log line names the stall:\n%s", logs)
	}
}
