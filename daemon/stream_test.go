package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

// slowStore serves a store directory, delaying every chunk so the daemon cannot verify
// a NAR within its VerifyWait and has to stream.
func slowStore(t *testing.T, dir string, delay time.Duration) string {
	fs := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/chunks/") {
			time.Sleep(delay)
		}
		fs.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func noise(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// publishDir publishes every path of cache into a new store directory.
func publishDir(t *testing.T, cache *cachetest.Cache, infos ...*nixcache.NarInfo) string {
	t.Helper()
	dir := t.TempDir()
	src, _ := blob.Open(cache.Dir, nil)
	dst, _ := chunkstore.Open(dir, nil)
	kr, _ := nixcache.ParseKeyring([]string{cache.PublicKey})
	p, err := publish.New(nixcache.NewBinaryCache(src), dst, kr, publish.Options{Params: chunk.DefaultParams()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var hps []string
	for _, ni := range infos {
		hps = append(hps, ni.HashPart())
	}
	if _, err := p.Run(context.Background(), hps); err != nil {
		t.Fatal(err)
	}
	return dir
}

// fetchNAR asks for a path's narinfo, then its NAR, and returns the status, the body
// and whether the body arrived whole.
func fetchNAR(t *testing.T, url string, ni *nixcache.NarInfo) (int, []byte, error) {
	t.Helper()
	mustGet(t, url+"/"+ni.HashPart()+".narinfo", 200)
	resp, err := http.Get(url + "/nar/" + manifest.Key(ni.NarHash) + ".nar")
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func TestStreamsWhenVerificationIsSlow(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	ni := cache.Add(t, cachetest.HashPart("slow"), "slow-1.0", noise(1, 3<<20), "none")
	storeURL := slowStore(t, publishDir(t, cache, ni), 30*time.Millisecond)
	_, url := startDaemon(t, daemon.Config{
		StoreURL:    storeURL,
		Upstreams:   []string{"http://127.0.0.1:1"}, // dead: chunks are the only source
		TrustedKeys: []string{cache.PublicKey},
		VerifyWait:  time.Millisecond,
	})
	status, body, err := fetchNAR(t, url, ni)
	if err != nil || status != 200 {
		t.Fatalf("status %d, err %v", status, err)
	}
	if sha256.Sum256(body) != ni.NarHash {
		t.Fatal("streamed NAR does not match its NarHash")
	}
}

// TestStreamAtOnce checks that StreamAtOnce streams a NAR still being fetched (a
// streamed response advertises no ranges) where a long VerifyWait answers only once
// the NAR is verified, with ranges.
func TestStreamAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name     string
		wait     time.Duration
		streamed bool
	}{
		{"stream at once", daemon.StreamAtOnce, true},
		{"wait a minute", time.Minute, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache := cachetest.New(t, "test-1")
			ni := cache.Add(t, cachetest.HashPart("slow"), "slow-1.0", noise(4, 2<<20), "none")
			_, url := startDaemon(t, daemon.Config{
				StoreURL:    slowStore(t, publishDir(t, cache, ni), 20*time.Millisecond),
				Upstreams:   []string{"http://127.0.0.1:1"}, // dead: chunks are the only source
				TrustedKeys: []string{cache.PublicKey},
				VerifyWait:  tc.wait,
			})
			mustGet(t, url+"/"+ni.HashPart()+".narinfo", 200)
			resp, err := http.Get(url + "/nar/" + manifest.Key(ni.NarHash) + ".nar")
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || sha256.Sum256(body) != ni.NarHash {
				t.Fatalf("status %d, err %v, matches NarHash: %v", resp.StatusCode, err, sha256.Sum256(body) == ni.NarHash)
			}
			if ranges := resp.Header.Get("Accept-Ranges") == "bytes"; ranges == tc.streamed {
				t.Errorf("Accept-Ranges %q; want it streamed: %v", resp.Header.Get("Accept-Ranges"), tc.streamed)
			}
		})
	}
}

// TestLyingManifestNeverCompletesWrongBody serves a manifest whose chunks are genuine
// (each matches its ID) but assemble into another NAR. Only the final hash can tell;
// the daemon streams because verification is slow, so it must break the connection
// before the last byte.
func TestLyingManifestNeverCompletesWrongBody(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	a := cache.Add(t, cachetest.HashPart("a"), "a-1.0", noise(2, 2<<20), "none")
	b := cache.Add(t, cachetest.HashPart("b"), "b-1.0", noise(3, 2<<20), "none")
	dir := publishDir(t, cache, a, b)

	s, _ := chunkstore.Open(dir, nil)
	ma, _, err := s.Manifest(context.Background(), a.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	lie := *ma
	lie.NarHash = b.NarHash // a's chunks under b's name: sizes add up, hash does not
	raw, err := lie.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(chunkstore.ManifestKey(manifest.Key(b.NarHash)))), raw, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, wait := range []time.Duration{time.Millisecond, time.Minute} {
		t.Run(wait.String(), func(t *testing.T) {
			_, url := startDaemon(t, daemon.Config{
				StoreURL:    slowStore(t, dir, 10*time.Millisecond),
				Upstreams:   []string{"http://127.0.0.1:1"},
				TrustedKeys: []string{cache.PublicKey},
				VerifyWait:  wait,
			})
			status, body, err := fetchNAR(t, url, b)
			if status == 200 && err == nil {
				t.Fatalf("a complete 200 came back (%d bytes, matches NarHash: %v)", len(body), sha256.Sum256(body) == b.NarHash)
			}
			// The stream may break before its status line was flushed (assembly failed
			// before the first chunk): no status and an error, as safe as a 404.
			if status != 200 && status != 404 && (status != 0 || err == nil) {
				t.Errorf("status %d; want 404, or a connection that breaks", status)
			}
			t.Logf("status %d, %d bytes, err %v", status, len(body), err)
		})
	}
}

// TestStalledClientKeepsOnlyItsNAR has a client ask for a large NAR and stop reading
// after the status line, as a stalled or hostile client would, while other NARs are
// served: an eviction to zero still takes every chunk but the stalled NAR's, so one
// reader cannot switch the cache budget off.
func TestStalledClientKeepsOnlyItsNAR(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	big := cache.Add(t, cachetest.HashPart("big"), "big-1.0", noise(11, 24<<20), "none")
	others := []*nixcache.NarInfo{
		cache.Add(t, cachetest.HashPart("b"), "b-1.0", noise(12, 1<<20), "none"),
		cache.Add(t, cachetest.HashPart("c"), "c-1.0", noise(13, 1<<20), "none"),
	}
	dir := publishDir(t, cache, append([]*nixcache.NarInfo{big}, others...)...)
	state := t.TempDir()
	_, url := startDaemon(t, daemon.Config{
		StoreURL:    "file://" + dir,
		Upstreams:   []string{"http://127.0.0.1:1"},
		TrustedKeys: []string{cache.PublicKey},
		StateDir:    state,
	})
	mustGet(t, url+"/"+big.HashPart()+".narinfo", 200)

	// The stalled client: it sends the request, reads the status line, and stops.
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "GET /nar/%s.nar HTTP/1.1\r\nHost: %s\r\n\r\n", manifest.Key(big.NarHash), strings.TrimPrefix(url, "http://")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(io.LimitReader(conn, 64)).ReadString('\n')
	if err != nil || !strings.Contains(line, "200") {
		t.Fatalf("stalled client's status line %q, %v", line, err)
	}

	for _, ni := range others {
		if status, body, err := fetchNAR(t, url, ni); status != 200 || err != nil || sha256.Sum256(body) != ni.NarHash {
			t.Fatalf("NAR %s: status %d, err %v", ni.StorePath, status, err)
		}
	}
	gc := adminPost(t, url, daemon.ReadAdminToken(state), "gc", daemon.GCRequest{ToBytes: 0})
	var st daemon.Status
	if err := json.Unmarshal(mustGet(t, url+"/shoal/status", 200), &st); err != nil {
		t.Fatal(err)
	}
	m, _, err := mustStore(t, dir).Manifest(context.Background(), big.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	distinct := map[chunk.ID]bool{}
	for _, e := range m.Entries {
		distinct[e.ID] = true
	}
	t.Logf("gc: %s; %d chunks left, %d NARs in flight; the stalled NAR has %d chunks", gc, st.Chunks, st.NARsInFlight, len(distinct))
	if st.NARsInFlight != 1 {
		t.Fatalf("%d NARs in flight, want the stalled one", st.NARsInFlight)
	}
	if st.Chunks > len(distinct) {
		t.Errorf("%d chunks survived an eviction to zero; only the stalled NAR's %d may", st.Chunks, len(distinct))
	}
}

// adminPost calls an admin route of the daemon at url with its admin token and
// returns the reply.
func adminPost(t *testing.T, url, token, route string, req any) string {
	t.Helper()
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	r, err := http.NewRequest(http.MethodPost, url+"/shoal/"+route, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("POST /shoal/%s: status %d: %s", route, resp.StatusCode, out)
	}
	return strings.TrimSpace(string(out))
}

func mustStore(t *testing.T, dir string) *chunkstore.Store {
	t.Helper()
	s, err := chunkstore.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestUnverifiedStreamAdvertisesNoRanges: a NAR streamed before it is verified comes
// without Accept-Ranges, so Nix restarts a broken transfer instead of resuming it with
// a Range onto bytes another attempt may not match; ranges are served only from the
// verified NAR.
func TestUnverifiedStreamAdvertisesNoRanges(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	ni := cache.Add(t, cachetest.HashPart("slow"), "slow-1.0", noise(21, 3<<20), "none")
	storeURL := slowStore(t, publishDir(t, cache, ni), 30*time.Millisecond)
	_, url := startDaemon(t, daemon.Config{
		StoreURL:    storeURL,
		Upstreams:   []string{"http://127.0.0.1:1"},
		TrustedKeys: []string{cache.PublicKey},
		VerifyWait:  time.Millisecond,
	})
	mustGet(t, url+"/"+ni.HashPart()+".narinfo", 200)
	// A plain request gets the stream; a Range request (a resumed transfer) waits
	// for the verified NAR and is answered from it.
	for _, tc := range []struct {
		name, rangeHdr string
		status         int
		wantRanges     string
	}{{"streamed while verifying", "", 200, ""}, {"verified", "bytes=0-", 206, "bytes"}} {
		req, err := http.NewRequest(http.MethodGet, url+"/nar/"+manifest.Key(ni.NarHash)+".nar", nil)
		if err != nil {
			t.Fatal(err)
		}
		if tc.rangeHdr != "" {
			req.Header.Set("Range", tc.rangeHdr)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tc.status || sha256.Sum256(body) != ni.NarHash {
			t.Fatalf("%s: status %d, err %v", tc.name, resp.StatusCode, err)
		}
		if got := resp.Header.Get("Accept-Ranges"); got != tc.wantRanges {
			t.Errorf("%s: Accept-Ranges %q, want %q", tc.name, got, tc.wantRanges)
		}
	}
}
