package p2p_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shoal-nix/shoal/internal/testkit"
)

// serveEnv makes the test binary a counting file server (see TestMain): the store and
// the upstream run in a namespace of their own, and the bytes they send are what the
// fleet pays.
const serveEnv = "SHOAL_P2P_TEST_SERVE"

func TestMain(m *testing.M) {
	if spec := os.Getenv(serveEnv); spec != "" {
		dir, addr, _ := strings.Cut(spec, "@")
		os.Exit(serveFiles(dir, addr))
	}
	os.Exit(m.Run())
}

func serveFiles(dir, addr string) int {
	var sent atomic.Int64
	files := http.FileServer(http.Dir(dir))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_sent" {
			fmt.Fprint(w, sent.Load())
			return
		}
		files.ServeHTTP(countingWriter{w, &sent}, r)
	})
	if err := http.ListenAndServe(addr, h); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	k, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(k))
	return k, err
}

// lan is a set of network namespaces joined by a bridge that lives in a namespace of
// its own, so no test traffic touches the machine's own interfaces.
type lan struct {
	t      *testing.T
	prefix string
	hub    string
	nss    []string
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		if _, err := exec.LookPath("ip"); err == nil {
			return
		}
	}
	if os.Getenv("SHOAL_E2E") == "1" {
		t.Fatal("SHOAL_E2E=1 but network namespaces need root and iproute2")
	}
	t.Skip("network namespaces need root and iproute2")
}

func newLAN(t *testing.T) *lan {
	requireRoot(t)
	var b [3]byte
	_, _ = rand.Read(b[:])
	l := &lan{t: t, prefix: "shoal" + hex.EncodeToString(b[:])}
	l.hub = l.prefix + "-hub"
	l.ip("netns", "add", l.hub)
	t.Cleanup(func() {
		for _, ns := range append(l.nss, l.hub) {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	l.ip("-n", l.hub, "link", "add", "br0", "type", "bridge")
	l.ip("-n", l.hub, "link", "set", "br0", "up")
	return l
}

func (l *lan) ip(args ...string) {
	l.t.Helper()
	runIP(l.t, args...)
}

// runIP runs iproute2's ip and fails the test with its output when it fails.
func runIP(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// host adds a namespace with address 10.77.0.<i>/24 on the bridge.
func (l *lan) host(i int) (ns, addr string) {
	ns = fmt.Sprintf("%s-%d", l.prefix, i)
	addr = fmt.Sprintf("10.77.0.%d", i)
	l.ip("netns", "add", ns)
	l.nss = append(l.nss, ns)
	port := fmt.Sprintf("v%d", i)
	l.ip("link", "add", port, "netns", l.hub, "type", "veth", "peer", "name", "eth0", "netns", ns)
	l.ip("-n", l.hub, "link", "set", port, "master", "br0", "up")
	l.ip("-n", ns, "addr", "add", addr+"/24", "dev", "eth0")
	l.ip("-n", ns, "link", "set", "eth0", "up")
	l.ip("-n", ns, "link", "set", "lo", "up")
	return ns, addr
}

// dialIn connects to addr from inside namespace ns: a socket belongs to the network
// namespace of the thread that made it, so a locked thread joins ns, dials, and is
// thrown away with its goroutine.
func dialIn(ns, addr string) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			ch <- res{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- res{nil, fmt.Errorf("joining %s: %w", ns, err)}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		ch <- res{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// forward makes addr in ns reachable on a loopback port of the test's namespace, so
// that Nix, running here, can talk to a daemon over there.
func forward(t *testing.T, ns, addr string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := dialIn(ns, addr)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// proc is a process running inside a namespace, killed at cleanup.
type proc struct {
	cmd *exec.Cmd
	log *testkit.SyncBuffer
}

func startIn(t *testing.T, ns string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{cmd: cmd, log: &testkit.SyncBuffer{}}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %v in %s: %v", args, ns, err)
	}
	t.Cleanup(func() { p.stop() })
	return p
}

func (p *proc) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// waitHTTP polls url through ns until it answers.
func httpIn(ns string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) { return dialIn(ns, addr) },
	}}
}

func getText(ns, url string) (string, error) {
	resp, err := httpIn(ns).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), err
}

func waitUp(t *testing.T, ns, url string, p *proc) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := getText(ns, url); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered; its log:\n%s", url, p.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// metric reads one unlabelled value, or the sum over a labelled family's given label
// values, from a daemon's /metrics.
func metric(t *testing.T, ns, base, name string, labels ...string) int64 {
	t.Helper()
	text, err := getText(ns, base+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		key, val, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		match := key == name
		for _, l := range labels {
			if key == fmt.Sprintf("%s{source=%q}", name, l) {
				match = true
			}
		}
		if match {
			v, _ := strconv.ParseInt(val, 10, 64)
			sum += v
		}
	}
	return sum
}

var peerIDLine = regexp.MustCompile(`"LAN sharing on".* peer_id=(\S+)`)

func peerID(t *testing.T, p *proc) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := peerIDLine.FindStringSubmatch(p.log.String()); m != nil {
			return m[1]
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no peer ID in the log:\n%s", p.log.String())
	return ""
}

func buildShoal(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "shoal")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/shoal").CombinedOutput(); err != nil {
		t.Fatalf("building shoal: %v\n%s", err, out)
	}
	return bin
}

func osexec(bin string, args ...string) ([]byte, error) {
	return exec.Command(bin, args...).CombinedOutput()
}
