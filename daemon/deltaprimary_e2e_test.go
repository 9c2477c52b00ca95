package daemon_test

import (
	"context"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/chunkstore/maintain"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/internal/nginxtest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

// TestNixSubstitutesFromDeltaPrimaryStore has a real Nix substitute from a
// delta-primary store behind nginx, with the upstream dead so the store is the only
// source: an upgrade (a daemon that holds the previous release fetches deltas), a cold
// client of the newer release (its chunks kept only as deltas are rebuilt from the
// older release's chunks), and the same cold client again after gc dropped the older
// release's narinfo, whose manifest and objects the newer one's chain still needs.
func TestNixSubstitutesFromDeltaPrimaryStore(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	sum := f.publishTo(t, dir, publish.Options{Deltas: true, Layout: chunkstore.FormatPacked, DeltaPrimary: true, MaxChain: 4}, f.pk)
	if sum.DeltaOnly == 0 {
		t.Fatalf("the publish kept no chunk as a delta only: %+v", sum)
	}
	ngx := nginxtest.Start(t, dir, "", "")
	dead := []string{"http://127.0.0.1:1"}

	d, url := startDaemon(t, daemon.Config{StoreURL: ngx.URL, Upstreams: dead, TrustedKeys: []string{f.pk}})
	f.copyAndVerify(t, url, "demo-1.0", "notes")
	f.copyAndVerify(t, url, "demo-1.1")
	if d.Metrics().Bytes("store"+fetch.DeltaSuffix) == 0 {
		t.Error("the upgrade fetched no deltas")
	}

	_, url = startDaemon(t, daemon.Config{StoreURL: ngx.URL, Upstreams: dead, TrustedKeys: []string{f.pk}})
	f.copyAndVerify(t, url, "demo-1.1")

	st, err := chunkstore.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	dropped, _ := nixcache.ParseHashPart(f.paths["demo-1.0"])
	const grace = time.Second
	time.Sleep(grace) // gc touches nothing younger
	rep, err := maintain.Collect(context.Background(), st, maintain.Options{
		Keep: func(hp string) bool { return hp != dropped }, Grace: grace, RepackBelow: 0.99,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gc: %+v", rep)
	_, url = startDaemon(t, daemon.Config{StoreURL: ngx.URL, Upstreams: dead, TrustedKeys: []string{f.pk}})
	f.copyAndVerify(t, url, "demo-1.1", "notes")
}
