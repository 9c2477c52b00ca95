package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/p2p"
)

// stranger is a bare libp2p host without any fleet key, connected to the daemon's
// peer node: anyone on the LAN.
func stranger(tb testing.TB, d *Daemon) host.Host {
	tb.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Connect(ctx, d.peers.AddrInfo()); err != nil {
		tb.Fatal(err)
	}
	return h
}

// ask sends one request and reads the whole answer.
func ask(tb testing.TB, h host.Host, to peer.ID, proto protocol.ID, req []byte) []byte {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, to, proto)
	if err != nil {
		tb.Fatal(err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Write(req); err != nil {
		tb.Fatal(err)
	}
	_ = s.CloseWrite()
	out, err := io.ReadAll(s)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

func peerDaemon(tb testing.TB) *Daemon {
	tb.Helper()
	d, err := New(Config{
		Upstreams: []string{tb.TempDir()}, StateDir: tb.TempDir(),
		TrustedKeys: []string{"cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="},
		DHT:         true, PeerListen: []string{"/ip4/127.0.0.1/tcp/0"},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

// BenchmarkHostileHave measures what a "have" request of 128 NarHashes costs the
// daemon when every hash names a verified NAR with a large manifest (a 2 GiB NAR's is
// about 1.2 MiB), against the same request for NARs it doesn't hold, in the same run.
// Both requests are 4 KiB; the ratio is what a stranger gains by asking about NARs
// the daemon holds. Run it with a fixed count (-benchtime=200x): past the per-peer
// request rate, requests are refused.
func BenchmarkHostileHave(b *testing.B) {
	d := peerDaemon(b)
	raw := make([]byte, 1200<<10)
	_, _ = rand.Read(raw)
	nar := sha256.Sum256([]byte("a large NAR"))
	key := manifest.Key(nar)
	if err := d.cache.PutManifest(key, raw); err != nil {
		b.Fatal(err)
	}
	if err := d.cache.MarkVerified(key, sha256.Sum256(raw)); err != nil {
		b.Fatal(err)
	}
	h := stranger(b, d)
	request := func(hash [32]byte) []byte {
		req := binary.AppendUvarint(nil, p2p.MaxHave)
		for range p2p.MaxHave {
			req = append(req, hash[:]...)
		}
		return req
	}
	hostile, baseline := request(nar), request(sha256.Sum256([]byte("not here")))
	if out := ask(b, h, d.peers.ID(), p2p.ProtoHave, hostile); len(out) != p2p.MaxHave || out[0] != 1 {
		b.Fatalf("the daemon does not hold the NAR: %v", out)
	}
	var tHostile, tBase time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		ask(b, h, d.peers.ID(), p2p.ProtoHave, baseline)
		t1 := time.Now()
		ask(b, h, d.peers.ID(), p2p.ProtoHave, hostile)
		tBase += t1.Sub(t0)
		tHostile += time.Since(t1)
	}
	b.ReportMetric(float64(tHostile.Nanoseconds())/float64(b.N), "ns/hostile")
	b.ReportMetric(float64(tBase.Nanoseconds())/float64(b.N), "ns/baseline")
	b.ReportMetric(float64(tHostile)/float64(tBase), "hostile/baseline")
	b.ReportMetric(float64(len(hostile)), "request-bytes")
}

// TestPeerNarInfoOnlyForVerifiedNARs has a stranger ask the daemon for a narinfo it
// looked up for Nix but never fetched the NAR of: that narinfo may come from a private
// store, and tells what this machine's Nix asked about.
func TestPeerNarInfoOnlyForVerifiedNARs(t *testing.T) {
	d := peerDaemon(t)
	hashPart := "0123456789abcdfghijklmnpqrsvwxyz"
	ni := []byte("StorePath: /nix/store/" + hashPart + "-private-1.0\nURL: nar/x.nar\nCompression: none\nNarHash: sha256:" +
		"1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s" + "\nNarSize: 1\nReferences: \n")
	if err := d.cache.PutNarInfo(hashPart, localcache.NarInfoEntry{Raw: ni, Source: "private store", Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if e, err := d.cache.GetNarInfo(hashPart, time.Now()); err != nil || e.Negative {
		t.Fatalf("narinfo not cached: %v", err)
	}
	h := stranger(t, d)
	out := ask(t, h, d.peers.ID(), p2p.ProtoNarInfo, []byte(hashPart))
	if len(out) == 0 || out[0] != 1 {
		t.Errorf("a stranger got the narinfo of a NAR the daemon never verified (%d bytes)", len(out))
	}
	// Once the daemon verified the NAR, it shares the narinfo with the fleet.
	parsed, err := nixcache.ParseNarInfo(ni)
	if err != nil {
		t.Fatal(err)
	}
	key := manifest.Key(parsed.NarHash)
	if err := d.cache.PutManifest(key, []byte("m")); err != nil {
		t.Fatal(err)
	}
	if err := d.cache.MarkVerified(key, sha256.Sum256([]byte("m"))); err != nil {
		t.Fatal(err)
	}
	if out := ask(t, h, d.peers.ID(), p2p.ProtoNarInfo, []byte(hashPart)); len(out) == 0 || out[0] != 0 {
		t.Errorf("the narinfo of a verified NAR was not served")
	}
}

// TestPeerNarInfoLosesUnsignedFields has a peer the daemon found answer a narinfo
// whose signature is valid, with unsigned fields added: Nix must get only what it
// needs, never the peer's Deriver, CA or keys of its own.
func TestPeerNarInfoLosesUnsignedFields(t *testing.T) {
	c := cachetest.New(t, "peer-fields-1")
	ni := c.Add(t, cachetest.HashPart("fields"), "fields-1.0", []byte("nar bytes"), "none")
	d, err := New(Config{
		Upstreams: []string{t.TempDir()}, TrustedKeys: []string{c.PublicKey}, StateDir: t.TempDir(),
		DHT: true, PeerListen: []string{"/ip4/127.0.0.1/tcp/0"}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	padded := append(bytes.Clone(ni.Raw), "Deriver: 00000000000000000000000000000000-evil.drv\nCA: fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\nX-Peer: yes\n"...)
	peerHost, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	defer peerHost.Close()
	peerHost.SetStreamHandler(p2p.ProtoNarInfo, func(s network.Stream) {
		_, _ = io.ReadAll(s)
		_, _ = s.Write(append([]byte{0}, binary.AppendUvarint(nil, uint64(len(padded)))...))
		_, _ = s.Write(padded)
		_ = s.Close()
	})
	if err := d.peers.Connect(context.Background(), peer.AddrInfo{ID: peerHost.ID(), Addrs: peerHost.Addrs()}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(d.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/" + ni.HashPart() + ".narinfo")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	for _, field := range []string{"Deriver:", "CA:", "X-Peer:"} {
		if bytes.Contains(body, []byte(field)) {
			t.Errorf("the peer's %s reached Nix:\n%s", field, body)
		}
	}
	got, err := nixcache.ParseNarInfo(body)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.keys.Verify(got); err != nil {
		t.Errorf("the narinfo passed on no longer verifies: %v", err)
	}
}
