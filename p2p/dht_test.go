package p2p

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dstest "github.com/ipfs/go-datastore/test"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/multiformats/go-multihash"

	"github.com/shoal-nix/shoal/chunk"
)

// memBackend serves fixed manifests as verified, and no narinfos or chunks.
type memBackend struct {
	mu        sync.Mutex
	manifests map[[32]byte][]byte
}

func (b *memBackend) NarInfo(string) ([]byte, bool) { return nil, false }
func (b *memBackend) VerifiedManifest(h [32]byte) ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m, ok := b.manifests[h]
	return m, ok
}
func (b *memBackend) Chunk(context.Context, chunk.ID) ([]byte, error) {
	return nil, fmt.Errorf("no chunks here")
}

func testNode(t testing.TB, psk pnet.PSK, boot []string, backend Backend) *Node {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	if backend == nil {
		backend = &memBackend{manifests: map[[32]byte][]byte{}}
	}
	n, err := New(Config{
		Identity: key,
		Listen:   []string{"/ip4/127.0.0.1/tcp/0"},
		FleetKey: psk,
		Backend:  backend,
		Log:      slog.New(slog.DiscardHandler),
		DHT:      &DHTConfig{Bootstrap: boot, AnnounceRate: 1000, FindTimeout: 5 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func p2pAddr(n *Node) string {
	return fmt.Sprintf("%s/p2p/%s", n.host.Addrs()[0], n.ID())
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDHTFindsAnnouncedNAR runs five nodes on loopback joined through one bootstrap
// node: a NAR one of them announces is found by the others through provider records,
// and its manifest is fetched over the LAN protocols. A node with another fleet key
// can't join and finds nothing.
func TestDHTFindsAnnouncedNAR(t *testing.T) {
	psk := pnet.PSK(bytes.Repeat([]byte{0x5a}, 32))
	other := pnet.PSK(bytes.Repeat([]byte{0xa5}, 32))
	for _, tc := range []struct {
		name      string
		finderKey pnet.PSK
		wantFound bool
	}{
		{"same fleet key", psk, true},
		{"other fleet key", other, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			boot := testNode(t, psk, nil, nil)
			bootAddr := []string{p2pAddr(boot)}
			var nodes []*Node
			holder := &memBackend{manifests: map[[32]byte][]byte{}}
			nar := sha256.Sum256([]byte("a NAR " + tc.name))
			holder.manifests[nar] = []byte("manifest of " + tc.name)
			provider := testNode(t, psk, bootAddr, holder)
			for range 3 {
				nodes = append(nodes, testNode(t, psk, bootAddr, nil))
			}
			finder := testNode(t, tc.finderKey, bootAddr, nil)
			for _, n := range append(nodes, provider) {
				waitFor(t, 10*time.Second, "routing table still empty", func() bool {
					s, _ := n.DHTStats()
					return s.RoutingTable > 0
				})
			}
			provider.Announce(nar)
			waitFor(t, 10*time.Second, "the NAR was never announced", func() bool {
				s, _ := provider.DHTStats()
				return s.Provides == 1
			})
			// The finder may be connected to the provider already; what is checked is
			// that the DHT names it.
			ctx := context.Background()
			began := time.Now()
			found := finder.providersFor(ctx, nar)
			t.Logf("provider lookup took %v, found %v", time.Since(began), found)
			if got := slices.Contains(found, provider.ID()); got != tc.wantFound {
				t.Fatalf("provider among those found: %v, want %v (found %v)", got, tc.wantFound, found)
			}
			raw, _, err := finder.askManifest(ctx, nar, func([]byte) error { return nil })
			if tc.wantFound {
				if err != nil || string(raw) != string(holder.manifests[nar]) {
					t.Fatalf("manifest through the DHT provider: %q, %v", raw, err)
				}
				if have := finder.Have(ctx, nar); !slices.Equal(have, []peer.ID{provider.ID()}) {
					t.Errorf("have: %v, want only the provider", have)
				}
			} else if err == nil {
				t.Fatalf("an outsider got the manifest %q", raw)
			}
			// A NAR nobody announced has no provider, and the lookup ends.
			if found := finder.providersFor(ctx, sha256.Sum256([]byte("nobody's"))); len(found) != 0 {
				t.Errorf("providers of an unannounced NAR: %v", found)
			}
		})
	}
}

func TestNarCID(t *testing.T) {
	nar := sha256.Sum256([]byte("nar"))
	c := NarCID(nar)
	if c.Version() != 1 || c.Prefix().Codec != 0x55 {
		t.Fatalf("CID %s: version %d codec %#x, want CIDv1 raw", c, c.Version(), c.Prefix().Codec)
	}
	dec, err := multihash.Decode(c.Hash())
	if err != nil {
		t.Fatal(err)
	}
	if dec.Code != multihash.SHA2_256 || !bytes.Equal(dec.Digest, nar[:]) {
		t.Fatalf("multihash %#x %x, want sha2-256 over the NarHash", dec.Code, dec.Digest)
	}
}

func TestParseBootstrap(t *testing.T) {
	id := "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
	for _, tc := range []struct {
		in      string
		wantErr string
	}{
		{"/ip4/10.0.0.1/tcp/37516/p2p/" + id, ""},
		{"/ip4/10.0.0.1/tcp/37516", "no /p2p/"},
		{"10.0.0.1:37516", "bootstrap peer"},
	} {
		_, err := ParseBootstrap([]string{tc.in})
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%q: error %v, want %q", tc.in, err, tc.wantErr)
		}
	}
	if _, err := parseDHTMode("sever"); err == nil {
		t.Error("a misspelt DHT mode was accepted")
	}
}

// fakeProvide records announcements, failing those for NARs in fail.
type fakeProvide struct {
	mu   sync.Mutex
	got  [][32]byte
	fail map[[32]byte]bool
}

func (f *fakeProvide) provide(_ context.Context, h [32]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, h)
	if f.fail[h] {
		return fmt.Errorf("no peers")
	}
	return nil
}

func (f *fakeProvide) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.got)
}

func nars(n int) [][32]byte {
	var out [][32]byte
	for i := range n {
		out = append(out, sha256.Sum256(fmt.Appendf(nil, "nar %d", i)))
	}
	return out
}

// TestAnnouncerBoundsAndResumes checks that the list keeps the most recently used
// NARs up to its bound, announces each once, and that a restart resumes the schedule:
// nothing announced recently is announced again, failures and new NARs are.
func TestAnnouncerBoundsAndResumes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "announced")
	ns := nars(6)
	fp := &fakeProvide{fail: map[[32]byte]bool{ns[5]: true}}
	cfg := announcerConfig{max: 4, path: path, rate: 1000, interval: time.Hour, provide: fp.provide, log: slog.New(slog.DiscardHandler)}
	a, err := newAnnouncer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.run(ctx); close(done) }()
	for _, h := range ns[:5] {
		a.touch(h)
	}
	a.touch(ns[2]) // used again: most recent
	waitFor(t, 5*time.Second, "announcements", func() bool { listed, p, _ := a.stats(); return listed == 4 && p >= 4 })
	a.touch(ns[5]) // fails; pushes out the least recently used
	waitFor(t, 5*time.Second, "the failing announcement", func() bool { _, _, f := a.stats(); return f == 1 })
	cancel()
	<-done
	if err := a.save(); err != nil {
		t.Fatal(err)
	}
	var order [][32]byte
	for e := a.order.Front(); e != nil; e = e.Next() {
		order = append(order, e.Value.(*announced).nar)
	}
	if want := [][32]byte{ns[5], ns[2], ns[4], ns[3]}; !slices.Equal(order, want) {
		t.Errorf("list order wrong: got %x", order)
	}

	fp2 := &fakeProvide{}
	cfg.provide = fp2.provide
	cfg.interval = time.Hour
	b, err := newAnnouncer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if listed, _, _ := b.stats(); listed != 4 {
		t.Fatalf("reloaded %d NARs, want 4", listed)
	}
	due := b.due(time.Now())
	if len(due) != 0 {
		t.Errorf("%d NARs due right after a restart; the failed one waits for its retry", len(due))
	}
	if due := b.due(time.Now().Add(provideRetry + time.Second)); len(due) != 1 || due[0].nar != ns[5] {
		t.Errorf("after the retry delay want only the failed NAR due, got %d", len(due))
	}
	if due := b.due(time.Now().Add(2 * time.Hour)); len(due) != 3 {
		t.Errorf("after the interval want the other 3 due, got %d", len(due))
	}
}

func TestAnnouncerRefusesBadFile(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"other file", "hello\n", "not a shoal list"},
		{"short hash", announceHeader + "\nabcd 0\n", "line 2"},
		{"bad time", announceHeader + "\n" + strings.Repeat("ab", 32) + " x\n", "line 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "announced")
			if err := os.WriteFile(path, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := newAnnouncer(announcerConfig{max: 10, path: path, rate: 1, interval: time.Hour, log: slog.New(slog.DiscardHandler)})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if b, _ := os.ReadFile(path); string(b) != tc.body {
				t.Error("the bad file was changed")
			}
		})
	}
}

// BenchmarkAnnounce measures what announcing a cache's NARs costs: N nodes on
// loopback, one announcing b.N NARs at the default pace's concurrency (without its
// rate limit). Reported: provider records held per NAR across the hosts, and the
// peers the announcer newly connected to (-short: 8 hosts; SHOAL_BENCH_HOSTS=N sets N).
//
//	go test -run '^$' -bench BenchmarkAnnounce -benchtime 2000x ./p2p
func BenchmarkAnnounce(b *testing.B) {
	hosts := 30
	if testing.Short() {
		hosts = 8
	}
	if v := os.Getenv("SHOAL_BENCH_HOSTS"); v != "" {
		var err error
		if hosts, err = strconv.Atoi(v); err != nil || hosts < 2 {
			b.Fatalf("SHOAL_BENCH_HOSTS=%q: want a number of hosts, at least 2", v)
		}
	}
	boot := testNode(b, nil, nil, nil)
	addr := []string{p2pAddr(boot)}
	var nodes []*Node
	for range hosts - 1 {
		nodes = append(nodes, testNode(b, nil, addr, nil))
	}
	ann := nodes[0]
	for _, n := range nodes {
		waitFor(b, 30*time.Second, "routing table still empty", func() bool { s, _ := n.DHTStats(); return s.RoutingTable > 0 })
	}
	// Let refreshes settle so the connections counted are the announcements'.
	time.Sleep(2 * time.Second)
	var dials sync.Map
	ann.host.Network().Notify(&connCounter{m: &dials})
	ns := nars(b.N)
	b.ResetTimer()
	began := time.Now()
	for _, h := range ns {
		ann.Announce(h)
	}
	waitFor(b, 30*time.Minute, "announcements", func() bool { s, _ := ann.DHTStats(); return s.Provides+s.ProvideFails >= int64(b.N) })
	took := time.Since(began)
	b.StopTimer()
	// Records are sent without waiting for their receipt: give them a moment to land.
	time.Sleep(time.Second)
	s, _ := ann.DHTStats()
	var records int
	for _, n := range append(nodes, boot) {
		for _, h := range ns[:min(len(ns), 50)] {
			provs, _ := n.dht.kad.ProviderStore().GetProviders(context.Background(), NarCID(h).Hash())
			records += len(provs)
		}
	}
	opened := 0
	dials.Range(func(any, any) bool { opened++; return true })
	b.ReportMetric(float64(s.ProvideFails), "failed")
	b.ReportMetric(float64(records)/float64(min(len(ns), 50)), "records/NAR")
	b.ReportMetric(float64(opened), "new-peers-connected")
	b.Logf("%d hosts: %d NARs announced in %v (%d failed); %.1f provider records held per NAR; %d peers newly connected, %d connected at the end",
		hosts, b.N, took.Round(time.Millisecond), s.ProvideFails, float64(records)/float64(min(len(ns), 50)), opened, len(ann.host.Network().Peers()))
}

// connCounter counts the distinct peers connected to after it is registered.
type connCounter struct{ m *sync.Map }

func (c *connCounter) Listen(network.Network, ma.Multiaddr)      {}
func (c *connCounter) ListenClose(network.Network, ma.Multiaddr) {}
func (c *connCounter) Connected(_ network.Network, conn network.Conn) {
	c.m.Store(conn.RemotePeer(), true)
}
func (c *connCounter) Disconnected(network.Network, network.Conn) {}

// TestRecordStore runs go-datastore's own suite against the on-disk record store, then
// checks that a node restarted on the same files still holds the records it kept for
// others, and that an unreadable record file is moved aside rather than fatal.
func TestRecordStore(t *testing.T) {
	dir := t.TempDir()
	s, err := openRecordStore(filepath.Join(dir, "suite.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	dstest.SubtestAll(t, s)
	s.Close()

	broken := filepath.Join(dir, "broken.db")
	if err := os.WriteFile(broken, []byte("not a bbolt file, and long enough to be read as one"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = openRecordStore(broken, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("a broken record file kept the store from opening: %v", err)
	}
	s.Close()
	if aside, _ := filepath.Glob(broken + ".broken-*"); len(aside) != 1 {
		t.Errorf("the broken file was not moved aside: %v", aside)
	}
}

func TestRecordsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	start := func(boot []string) *Node {
		n, err := New(Config{
			Identity: key, Listen: []string{"/ip4/127.0.0.1/tcp/0"},
			Backend: &memBackend{manifests: map[[32]byte][]byte{}}, Log: slog.New(slog.DiscardHandler),
			DHT: &DHTConfig{Bootstrap: boot, RecordFile: filepath.Join(dir, "records.db"), AnnounceFile: filepath.Join(dir, "announced")},
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	holder := start(nil)
	provider := testNode(t, nil, []string{p2pAddr(holder)}, nil)
	waitFor(t, 10*time.Second, "routing table still empty", func() bool { s, _ := provider.DHTStats(); return s.RoutingTable > 0 })
	nar := sha256.Sum256([]byte("kept"))
	provider.Announce(nar)
	has := func(n *Node) bool {
		provs, _ := n.dht.kad.ProviderStore().GetProviders(context.Background(), NarCID(nar).Hash())
		for _, p := range provs {
			if p.ID == provider.ID() {
				return true
			}
		}
		return false
	}
	waitFor(t, 10*time.Second, "the holder never got the record", func() bool { return has(holder) })
	if err := holder.Close(); err != nil {
		t.Fatal(err)
	}
	again := start(nil)
	defer again.Close()
	if !has(again) {
		t.Error("the restarted node lost the record it held for the provider")
	}
}
