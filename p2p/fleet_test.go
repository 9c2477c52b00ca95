package p2p_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/internal/nixtest"
	"github.com/shoal-nix/shoal/localcache"
)

// fleet is one store/upstream host and shoal daemons on a bridged LAN.
type fleet struct {
	t        *testing.T
	lan      *lan
	bin      string
	pk       string
	nix      *nixtest.Env
	paths    []string
	cdn      *proc
	cdnNS    string
	fleetKey string
}

type node struct {
	ns, addr, base, state string
	p                     *proc
	args                  []string
}

// corpusEnv names a make-corpus directory (paths, pk, cache-xz/) to run the fleet on
// instead of the small synthetic closure, for measurements on real data:
//
//	SHOAL_FLEET_CORPUS=CORPUS SHOAL_E2E=1 go test -run TestFleetSharesOverLAN -v -timeout 60m ./p2p
const corpusEnv = "SHOAL_FLEET_CORPUS"

func newFleet(t *testing.T, packages, size int) *fleet {
	e := nixtest.NewEnv(t)
	f := &fleet{t: t, lan: newLAN(t), bin: buildShoal(t), nix: e}
	root := t.TempDir()
	cache := filepath.Join(root, "cache") // the CDN serves it there
	if corpus := os.Getenv(corpusEnv); corpus != "" {
		pk, err := os.ReadFile(filepath.Join(corpus, "pk"))
		if err != nil {
			t.Fatal(err)
		}
		paths, err := os.ReadFile(filepath.Join(corpus, "paths"))
		if err != nil {
			t.Fatal(err)
		}
		f.pk, f.paths = strings.TrimSpace(string(pk)), strings.Fields(string(paths))
		if err := os.Symlink(filepath.Join(corpus, "cache-xz"), cache); err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(corpus, "cache-xz") // listing does not follow the link
	} else {
		sk, pk := e.GenerateKey(t, "fleet-test-1")
		f.pk = pk
		for i := range packages {
			f.paths = append(f.paths, e.AddPath(t, fmt.Sprintf("pkg%d-1.0", i), nixtest.PackageVersion(int64(100+i), 1, size)))
		}
		e.Sign(t, sk, f.paths...)
		e.CopyToCache(t, cache, "xz", f.paths...)
	}
	if out, err := runBin(f.bin, "publish", "--from", "file://"+cache, "--to", filepath.Join(root, "store"),
		"--trusted-public-key", f.pk, "--all"); err != nil {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	f.cdnNS, _ = f.lan.host(1)
	f.cdn = startIn(t, f.cdnNS, []string{serveEnv + "=" + root + "@10.77.0.1:8080"}, os.Args[0])
	waitUp(t, f.cdnNS, "http://10.77.0.1:8080/_sent", f.cdn)
	return f
}

func (f *fleet) cdnSent() int64 {
	s, err := getText(f.cdnNS, "http://10.77.0.1:8080/_sent")
	if err != nil {
		f.t.Fatal(err)
	}
	var n int64
	fmt.Sscan(s, &n)
	return n
}

// daemon starts shoal daemon i (10.77.0.i) with LAN sharing on.
func (f *fleet) daemon(i int, extra ...string) *node {
	ns, addr := f.lan.host(i)
	n := &node{ns: ns, addr: addr, base: "http://" + addr + ":37515", state: f.t.TempDir()}
	n.args = append([]string{f.bin, "--log-level", "info", "daemon", "--listen", addr + ":37515",
		"--store", "http://10.77.0.1:8080/store", "--upstream", "http://10.77.0.1:8080/cache",
		"--trusted-public-key", f.pk, "--state-dir", n.state, "--cache-size", "0",
		// Every node shares this machine's /nix/store; seeding from it would hide what
		// peers and the store serve.
		"--seed-store", "",
		"--lan", "--peer-listen", "/ip4/" + addr + "/tcp/37516"}, extra...)
	f.start(n)
	return n
}

func (f *fleet) start(n *node) {
	n.p = startIn(f.t, n.ns, nil, n.args...)
	waitUp(f.t, n.ns, n.base+"/nix-cache-info", n.p)
}

// waitPeers waits until n is connected to at least want peers.
func (f *fleet) waitPeers(n *node, want int64) {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for metric(f.t, n.ns, n.base, "shoal_peers_connected") < want {
		if time.Now().After(deadline) {
			f.t.Fatalf("%s: fewer than %d peers after 30s; log:\n%s", n.addr, want, n.p.log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fetch substitutes the closure through n into a fresh store and verifies it.
func (f *fleet) fetch(n *node) time.Duration {
	f.t.Helper()
	ctx := context.Background()
	root := f.t.TempDir()
	began := time.Now()
	if out, err := f.nix.CopyFrom(ctx, forward(f.t, n.ns, n.addr+":37515"), f.pk, root, f.paths...); err != nil {
		f.t.Fatalf("%s: nix copy: %v\n%s\ndaemon log:\n%s", n.addr, err, out, n.p.log.String())
	}
	took := time.Since(began)
	if out, err := f.nix.Verify(ctx, root, f.paths...); err != nil {
		f.t.Fatalf("%s: nix store verify: %v\n%s", n.addr, err, out)
	}
	return took
}

func runBin(bin string, args ...string) (string, error) {
	out, err := osexec(bin, args...)
	return string(out), err
}

// TestFleetSharesOverLAN follows the life of a fleet: one daemon pays for a closure,
// the others get it from it, the store and upstream go down and a newcomer still gets
// it, a peer whose chunks rotted is caught and dropped, a frozen peer costs no more
// than its deadline.
func TestFleetSharesOverLAN(t *testing.T) {
	f := newFleet(t, 3, 3<<20)
	const n = 4
	var nodes []*node
	for i := range n {
		nodes = append(nodes, f.daemon(10+i))
	}
	for _, nd := range nodes {
		f.waitPeers(nd, n-1)
	}
	before := f.cdnSent()
	first := f.fetch(nodes[0])
	cold := f.cdnSent() - before
	var rest time.Duration
	for _, nd := range nodes[1:] {
		rest += f.fetch(nd)
	}
	total := f.cdnSent() - before
	var served int64
	for _, nd := range nodes {
		served += metric(t, nd.ns, nd.base, "shoal_peer_served_bytes")
	}
	t.Logf("store+upstream bytes: node 1 cold %d; all %d nodes %d = %.3fx; chunk bytes served between peers %d",
		cold, n, total, float64(total)/float64(cold), served)
	t.Logf("wall time: node 1 %v; nodes 2..%d %v on average", first.Round(time.Millisecond), n, (rest / (n - 1)).Round(time.Millisecond))
	if float64(total) > 1.1*float64(cold) {
		t.Errorf("the fleet cost the store and upstream %d bytes, more than 1.1x one node's %d", total, cold)
	}
	if served == 0 {
		t.Error("no chunk went from peer to peer")
	}

	// The store and the upstream go down; a newcomer gets everything from its peers.
	f.cdn.stop()
	late := f.daemon(20)
	f.waitPeers(late, n)
	f.fetch(late)
	if got := metric(t, late.ns, late.base, "shoal_fetched_bytes_total", "store", "upstream"); got != 0 {
		t.Errorf("with the store and upstream down the newcomer still counted %d bytes from them", got)
	}
	if metric(t, late.ns, late.base, "shoal_fetched_bytes_total", "peer") == 0 {
		t.Error("the newcomer counted no bytes from peers")
	}

	// Node 1's chunks rot on disk: to its peers it now answers wrong bytes.
	liar := nodes[0]
	liarID := peerID(t, liar.p)
	liar.p.stop()
	corrupted := corruptChunks(t, filepath.Join(liar.state, "cache.db"))
	t.Logf("corrupted %d chunk objects in node 1's cache", corrupted)
	f.start(liar)
	victim := f.daemon(21)
	f.waitPeers(victim, n+1)
	f.fetch(victim)
	if log := victim.p.log.String(); !strings.Contains(log, "dropping peer") || !strings.Contains(log, liarID) {
		t.Errorf("the lying peer %s was not dropped; log:\n%s", liarID, log)
	}

	// Node 2 freezes; a newcomer must not wait on it past its deadlines.
	frozen := nodes[1]
	if err := frozen.p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	slow := f.daemon(22)
	f.waitPeers(slow, n)
	took := f.fetch(slow)
	t.Logf("with a frozen peer the fetch took %v", took.Round(time.Millisecond))
	if took > 90*time.Second {
		t.Errorf("a frozen peer stalled the fetch for %v", took)
	}
}

// corruptChunks flips a byte in the middle of every chunk object stored in the cache
// file, as a rotting disk would, and returns how many it changed.
func corruptChunks(t *testing.T, path string) int {
	t.Helper()
	c, err := localcache.Open(path, localcache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var objs [][]byte
	err = c.ForEachChunk(context.Background(), func(_ chunk.ID, obj []byte) error {
		objs = append(objs, bytes.Clone(obj))
		return nil
	})
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, o := range objs {
		if len(o) < 64 {
			continue
		}
		if i := bytes.Index(file, o); i >= 0 {
			file[i+len(o)/2] ^= 0xff
			n++
		}
	}
	if n == 0 {
		t.Fatal("found no chunk object in the cache file to corrupt")
	}
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFleetKeyKeepsOthersOut runs two daemons sharing a fleet key and one without it:
// the two connect, the third connects to nobody.
func TestFleetKeyKeepsOthersOut(t *testing.T) {
	f := newFleet(t, 1, 256<<10)
	key := filepath.Join(t.TempDir(), "fleet.key")
	if err := os.WriteFile(key, []byte("/key/swarm/psk/1.0.0/\n/base16/\n"+strings.Repeat("5a", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := f.daemon(30, "--fleet-key", key)
	b := f.daemon(31, "--fleet-key", key)
	outsider := f.daemon(32)
	f.waitPeers(a, 1)
	f.waitPeers(b, 1)
	// mDNS has had time to introduce everyone; give the outsider's dials a moment more.
	time.Sleep(3 * time.Second)
	if got := metric(t, outsider.ns, outsider.base, "shoal_peers_connected"); got != 0 {
		t.Errorf("the daemon without the fleet key has %d peers", got)
	}
	for _, nd := range []*node{a, b} {
		if got := metric(t, nd.ns, nd.base, "shoal_peers_connected"); got != 1 {
			t.Errorf("%s: %d peers, want only its fleet mate", nd.addr, got)
		}
	}
	// The outsider still works, from the store.
	f.fetch(outsider)
}
