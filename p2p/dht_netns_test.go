package p2p_test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/internal/nixtest"
)

// routed is a set of network namespaces, each on its own /24 behind a router
// namespace that forwards IP between them: no two nodes share a link, so mDNS (and
// any other link-local multicast) reaches nobody, as between offices or CI networks.
type routed struct {
	t      *testing.T
	prefix string
	router string
	nss    []string
}

func newRouted(t *testing.T) *routed {
	requireRoot(t)
	var b [3]byte
	_, _ = rand.Read(b[:])
	r := &routed{t: t, prefix: "shoalr" + hex.EncodeToString(b[:])}
	r.router = r.prefix + "-rt"
	r.ip("netns", "add", r.router)
	t.Cleanup(func() {
		for _, ns := range append(r.nss, r.router) {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	if out, err := exec.Command("ip", "netns", "exec", r.router, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("turning on forwarding in %s: %v\n%s", r.router, err, out)
	}
	r.ip("-n", r.router, "link", "set", "lo", "up")
	return r
}

func (r *routed) ip(args ...string) {
	r.t.Helper()
	runIP(r.t, args...)
}

// host adds a namespace with address 10.78.<i>.2/24, routed through 10.78.<i>.1.
func (r *routed) host(i int) (ns, addr string) {
	ns = fmt.Sprintf("%s-%d", r.prefix, i)
	addr = fmt.Sprintf("10.78.%d.2", i)
	r.ip("netns", "add", ns)
	r.nss = append(r.nss, ns)
	port := fmt.Sprintf("r%d", i)
	r.ip("link", "add", port, "netns", r.router, "type", "veth", "peer", "name", "eth0", "netns", ns)
	r.ip("-n", r.router, "addr", "add", fmt.Sprintf("10.78.%d.1/24", i), "dev", port)
	r.ip("-n", r.router, "link", "set", port, "up")
	r.ip("-n", ns, "addr", "add", addr+"/24", "dev", "eth0")
	r.ip("-n", ns, "link", "set", "eth0", "up")
	r.ip("-n", ns, "link", "set", "lo", "up")
	r.ip("-n", ns, "route", "add", "default", "via", fmt.Sprintf("10.78.%d.1", i))
	return ns, addr
}

var firstProvider = regexp.MustCompile(`msg="DHT providers found".* first_after=(\S+)`)

// TestDHTAcrossRoutedNetworks runs seven daemons, each on a subnet of its own, joined
// through one bootstrap daemon whose peer ID came from shoal id. One node fetches a
// closure from the store; with the store down, another finds it through the DHT and
// fetches it from that node; with that node gone, a third is served by whoever else
// holds it, skipping the dead provider within the deadline.
func TestDHTAcrossRoutedNetworks(t *testing.T) {
	r := newRouted(t)
	e := nixtest.NewEnv(t)
	f := &fleet{t: t, bin: buildShoal(t), nix: e}
	root := t.TempDir()
	sk, pk := e.GenerateKey(t, "dht-test-1")
	f.pk = pk
	for i := range 2 {
		f.paths = append(f.paths, e.AddPath(t, fmt.Sprintf("dht%d-1.0", i), nixtest.PackageVersion(int64(300+i), 1, 2<<20)))
	}
	e.Sign(t, sk, f.paths...)
	e.CopyToCache(t, filepath.Join(root, "cache"), "xz", f.paths...)
	if out, err := runBin(f.bin, "publish", "--from", "file://"+filepath.Join(root, "cache"), "--to", filepath.Join(root, "store"),
		"--trusted-public-key", f.pk, "--all"); err != nil {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	// The store and the upstream are separate servers, so the store can go down alone.
	cdnNS, cdnAddr := r.host(1)
	store := startIn(t, cdnNS, []string{serveEnv + "=" + root + "@" + cdnAddr + ":8080"}, os.Args[0])
	upstream := startIn(t, cdnNS, []string{serveEnv + "=" + root + "@" + cdnAddr + ":8081"}, os.Args[0])
	waitUp(t, cdnNS, "http://"+cdnAddr+":8080/_sent", store)
	waitUp(t, cdnNS, "http://"+cdnAddr+":8081/_sent", upstream)

	const count = 7
	states := make([]string, count)
	for i := range states {
		states[i] = t.TempDir()
	}
	id, err := runBin(f.bin, "id", "--state-dir", states[0])
	if err != nil {
		t.Fatalf("shoal id: %v\n%s", err, id)
	}
	boot := fmt.Sprintf("/ip4/10.78.10.2/tcp/37516/p2p/%s", strings.TrimSpace(id))
	var nodes []*node
	for i := range count {
		ns, addr := r.host(10 + i)
		n := &node{ns: ns, addr: addr, base: "http://" + addr + ":37515", state: states[i]}
		n.args = []string{f.bin, "--log-level", "info", "daemon", "--listen", addr + ":37515",
			"--store", "http://" + cdnAddr + ":8080/store", "--upstream", "http://" + cdnAddr + ":8081/cache",
			"--trusted-public-key", f.pk, "--state-dir", n.state, "--cache-size", "0", "--seed-store", "",
			"--peer-listen", "/ip4/" + addr + "/tcp/37516", "--dht", "--bootstrap-peer", boot}
		if i == 3 || i == 6 {
			// B and D are clients: they hold no records for others, so what they
			// find comes from asking server nodes over the network.
			n.args = append(n.args, "--dht-mode", "client")
		}
		f.start(n)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		waitMetric(t, n, "shoal_dht_routing_table_peers", 1)
	}
	aID := peerIDOf(t, nodes[1])

	a, b, c, d := nodes[1], nodes[3], nodes[4], nodes[6]
	f.fetch(a)
	cold := metric(t, a.ns, a.base, "shoal_fetched_bytes_total", "store", "upstream")
	waitMetric(t, a, "shoal_dht_provides", int64(len(f.paths)))

	store.stop()
	took := f.fetch(b)
	fromStore := metric(t, b.ns, b.base, "shoal_fetched_bytes_total", "store", "upstream")
	fromPeers := metric(t, b.ns, b.base, "shoal_fetched_bytes_total", "peer")
	m := firstProvider.FindStringSubmatch(b.p.log.String())
	if m == nil {
		t.Fatalf("node B never found a provider through the DHT; log:\n%s", b.p.log.String())
	}
	t.Logf("node A paid the store %d bytes; with the store down node B fetched in %v: %d bytes from peers, %d from the store and upstream; first DHT provider after %s",
		cold, took.Round(time.Millisecond), fromPeers, fromStore, m[1])
	if fromStore != 0 {
		t.Errorf("node B fetched %d NAR bytes from the store and upstream, want 0", fromStore)
	}
	if fromPeers == 0 {
		t.Error("node B fetched nothing from peers")
	}

	waitMetric(t, b, "shoal_dht_provides", int64(len(f.paths)))

	// Node C also holds the closure now; node A goes away, its records stay behind.
	f.fetch(c)
	waitMetric(t, c, "shoal_dht_provides", int64(len(f.paths)))
	a.p.stop()
	took = f.fetch(d)
	if got := metric(t, d.ns, d.base, "shoal_fetched_bytes_total", "store", "upstream"); got != 0 {
		t.Errorf("with a provider gone node D fetched %d bytes from the store and upstream, want 0", got)
	}
	t.Logf("with one provider gone node D fetched in %v", took.Round(time.Millisecond))
	if log := d.p.log.String(); !regexp.MustCompile(`"DHT provider unreachable".*peer=` + aID).MatchString(log) {
		t.Errorf("node D never tried (and skipped) the dead provider %s; log:\n%s", aID, log)
	}
	// The provider lookup and the dials it leads to are bounded by 10 s, the have
	// round by 2 s, per NAR.
	if limit := time.Duration(len(f.paths)) * 30 * time.Second; took > limit {
		t.Errorf("a dead provider stalled the fetch for %v (limit %v)", took, limit)
	}

	// Node C freezes: its records stand, its connections hang. Node E still gets the
	// closure from B (or D) without waiting out a deadline per NAR.
	en := nodes[5]
	if err := c.p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	took = f.fetch(en)
	if got := metric(t, en.ns, en.base, "shoal_fetched_bytes_total", "store", "upstream"); got != 0 {
		t.Errorf("with a provider frozen node E fetched %d bytes from the store and upstream, want 0", got)
	}
	t.Logf("with one provider gone and one frozen node E fetched in %v", took.Round(time.Millisecond))
	if limit := time.Duration(len(f.paths)) * 30 * time.Second; took > limit {
		t.Errorf("a frozen provider stalled the fetch for %v (limit %v)", took, limit)
	}
}

// peerIDOf reads a daemon's peer ID with shoal id, from its state directory.
func peerIDOf(t *testing.T, n *node) string {
	t.Helper()
	id, err := runBin(n.args[0], "id", "--state-dir", n.state)
	if err != nil {
		t.Fatalf("shoal id: %v\n%s", err, id)
	}
	return strings.TrimSpace(id)
}

// waitMetric waits until a daemon's gauge reaches want.
func waitMetric(t *testing.T, n *node, name string, want int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for metric(t, n.ns, n.base, name) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s below %d after 30s; log:\n%s", n.addr, name, want, n.p.log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
