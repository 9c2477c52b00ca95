package daemon_test

import (
	"context"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/chunkstore/maintain"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/nixtest"
	"github.com/shoal-nix/shoal/internal/s3test"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

// TestNixSubstitutesFromS3Store publishes into a real S3 server (MinIO), serves Nix from
// it with the upstream dead (so every byte comes from S3 chunks), then collects garbage
// keeping one version: the survivor still substitutes and the dropped one is gone.
func TestNixSubstitutesFromS3Store(t *testing.T) {
	s3 := s3test.Start(t)
	f := newFixture(t)
	storeURL := s3.URL(s3.Bucket(t, "shoal-e2e"), "store")
	ctx := context.Background()

	f.publishTo(t, storeURL, publish.Options{}, f.pk)
	dst, err := chunkstore.Open(storeURL, nil)
	if err != nil {
		t.Fatal(err)
	}

	serve := func() string {
		_, url := startDaemon(t, daemon.Config{
			StoreURL:    storeURL,
			Upstreams:   []string{"http://127.0.0.1:1"}, // dead: S3 is the only source
			TrustedKeys: []string{f.pk},
		})
		return url
	}
	f.copyAndVerify(t, serve(), "demo-1.0", "demo-1.1", "notes")

	keep, _ := nixcache.ParseHashPart(f.paths["demo-1.1"])
	// Collect as if an hour had passed: S3 times are whole seconds, and gc spares
	// anything that might be younger than its grace period.
	later := func() time.Time { return time.Now().Add(time.Hour) }
	rep, err := maintain.Collect(ctx, dst, maintain.Options{Keep: func(hp string) bool { return hp == keep }, Now: later})
	if err != nil {
		t.Fatalf("gc: %v", err)
	}
	if rep.NarInfos.Deleted != 2 || rep.Chunks.Deleted == 0 {
		t.Fatalf("gc report %+v: want 2 narinfos and some chunks deleted", rep)
	}

	// A fresh daemon (empty local cache) still serves the survivor from S3 ...
	url := serve()
	f.copyAndVerify(t, url, "demo-1.1")
	// ... and no longer the dropped path.
	if out, err := nixtest.NewEnv(t).CopyFrom(ctx, url, f.pk, t.TempDir(), f.paths["demo-1.0"]); err == nil {
		t.Fatalf("a path dropped by gc was still substituted:\n%s", out)
	}
}
