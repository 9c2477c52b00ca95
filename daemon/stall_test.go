package daemon_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
)

// metric reads one line of the daemon's /metrics, 0 when it is absent.
func metric(t *testing.T, base, name string) int64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	return 0
}

// waitFor polls cond until it holds; the bound only turns a hang into a failure.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s", what)
		}
	}
}

// stalledNAR asks for a NAR on a raw connection with a tiny receive window and
// reads nothing, as a client that stopped would.
func stalledNAR(t *testing.T, base string, ni *nixcache.NarInfo) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	addr := strings.TrimPrefix(base, "http://")
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET /nar/%s.nar HTTP/1.1\r\nHost: %s\r\n\r\n", manifest.Key(ni.NarHash), addr)
	return conn
}

// TestStalledReaderIsCut asks for a NAR far larger than the socket buffers and stops
// reading. The response holds the NAR's lease until its last byte; the daemon must
// give up on the connection instead of holding it for as long as the client likes.
func TestStalledReaderIsCut(t *testing.T) {
	c := cachetest.New(t, "stall-1")
	ni := c.Add(t, cachetest.HashPart("stall"), "stall-1.0", noise(7, 16<<20), "none")
	_, base := startDaemon(t, daemon.Config{
		Upstreams: []string{c.Dir}, TrustedKeys: []string{c.PublicKey},
		StallTimeout: 200 * time.Millisecond,
	})
	mustGet(t, base+"/"+ni.HashPart()+".narinfo", 200)
	conn := stalledNAR(t, base, ni)
	waitFor(t, "the stalled NAR response to end", func() bool {
		return metric(t, base, `shoal_requests_total{route="nar",status="200"}`) == 1
	})
	// The response streamed while the NAR was assembled; the job that assembles it
	// finishes on its own and lets the chunks go.
	waitFor(t, "no NAR in flight after the only response ended", func() bool {
		return metric(t, base, "shoal_nars_in_flight") == 0
	})
	// The client wakes up: it gets what was in the buffers, never the whole NAR.
	got, _ := io.Copy(io.Discard, conn)
	if got >= int64(ni.NarSize) {
		t.Errorf("the stalled client received %d bytes, the whole NAR", got)
	}
}

// TestNARResponsesAreCapped opens more stalled NAR requests than the daemon serves
// at once: the ones beyond the cap must wait without holding a NAR in flight.
func TestNARResponsesAreCapped(t *testing.T) {
	c := cachetest.New(t, "cap-1")
	ni := c.Add(t, cachetest.HashPart("cap"), "cap-1.0", noise(8, 16<<20), "none")
	const running, clients = 2, 5
	_, base := startDaemon(t, daemon.Config{
		Upstreams: []string{c.Dir}, TrustedKeys: []string{c.PublicKey},
		MaxNARResponses: running, MaxNARWaiting: 2,
	})
	mustGet(t, base+"/"+ni.HashPart()+".narinfo", 200)
	for range clients - 1 {
		stalledNAR(t, base, ni)
	}
	waitFor(t, "every request to be running or waiting", func() bool {
		return metric(t, base, "shoal_nar_responses_running")+metric(t, base, "shoal_nar_responses_waiting") == clients-1
	})
	if n := metric(t, base, "shoal_nar_responses_running"); n > running {
		t.Errorf("%d NAR responses running, the cap is %d", n, running)
	}
	// One more than running and waiting together is turned away, not queued.
	resp, err := http.Get(base + "/nar/" + manifest.Key(ni.NarHash) + ".nar")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("status %d (Retry-After %q) past the queue, want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}
