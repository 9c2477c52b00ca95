package daemon_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/p2p"
)

// freePort returns a loopback TCP port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestStatusListsPeers(t *testing.T) {
	c := cachetest.New(t, "status-1")
	firstState := t.TempDir()
	key, err := p2p.LoadIdentity(firstState)
	if err != nil {
		t.Fatal(err)
	}
	firstID, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	first, _ := startDaemon(t, daemon.Config{
		Upstreams: []string{c.Dir}, TrustedKeys: []string{c.PublicKey}, StateDir: firstState,
		DHT: true, PeerListen: []string{fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)},
	})
	second, _ := startDaemon(t, daemon.Config{
		Upstreams: []string{c.Dir}, TrustedKeys: []string{c.PublicKey},
		DHT: true, PeerListen: []string{"/ip4/127.0.0.1/tcp/0"},
		BootstrapPeers: []string{fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", port, firstID)},
	})
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := second.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(st.Peers, firstID.String()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status lists peers %v, not the bootstrap peer %s", st.Peers, firstID)
		}
		time.Sleep(100 * time.Millisecond)
	}
	st, err := first.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 {
		t.Errorf("the bootstrap daemon lists peers %v, want the one that joined", st.Peers)
	}
}
