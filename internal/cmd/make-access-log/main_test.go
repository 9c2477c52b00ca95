package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/analyze/accesslog"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/internal/cachetest"
)

// The generated log must be what the analysis reads: every line parses but
// the deliberately broken ones, NARs are only fetched once published, and
// the copied cache dates them so.
func TestGeneratedLogIsAnalyzable(t *testing.T) {
	src := cachetest.New(t, "gen-1")
	for i := range 3 {
		src.Add(t, cachetest.HashPart(fmt.Sprint("gen", i)), fmt.Sprintf("pkg-1.%d", i), []byte(fmt.Sprint("nar ", i)), "zstd")
	}
	nars, err := readCache(src.Dir)
	if err != nil {
		t.Fatal(err)
	}
	end := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for i := range nars {
		nars[i].published = end.Add(-5*24*time.Hour - time.Duration(len(nars)-1-i)*10*24*time.Hour)
	}
	out := t.TempDir()
	if err := copyCache(src.Dir, filepath.Join(out, "cache"), nars); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"combined", "s3"} {
		log := filepath.Join(out, format+".log.gz")
		lines, err := writeLog(log, nars, end, 7, 1000, format, rand.New(rand.NewPCG(1, 2)))
		if err != nil {
			t.Fatal(err)
		}
		rep, err := accesslog.AnalyzeLogs(context.Background(), []string{log}, accesslog.LogOptions{
			OlderThan: []time.Duration{0, 7 * 24 * time.Hour},
			Resolver:  accesslog.CacheResolver{Backend: mustOpen(t, filepath.Join(out, "cache")), Jobs: 2},
			Top:       5,
		})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Lines+rep.Malformed != uint64(lines) || rep.NAR.Requests < 5000 || rep.NARs != len(nars) {
			t.Errorf("%s: %d lines written; read %d requests and %d malformed, %d NAR requests of %d NARs",
				format, lines, rep.Lines, rep.Malformed, rep.NAR.Requests, rep.NARs)
		}
		// Age 0 at the cache's dates retires every request: none came before
		// its NAR was published, and every NAR is in the copied cache.
		if s := rep.Scenarios[0]; s.Retired != rep.NAR || rep.NotInCache.Requests != 0 {
			t.Errorf("%s: retired at age 0: %+v of %+v; not in cache %+v", format, s.Retired, rep.NAR, rep.NotInCache)
		}
		// The newest NAR is younger than 7 days throughout.
		for _, h := range rep.Scenarios[1].HotByRequests {
			if h.StorePath == nars[len(nars)-1].info.StorePath {
				t.Errorf("%s: %s retired at 7 days", format, h.StorePath)
			}
		}
	}
}

func mustOpen(t *testing.T, dir string) blob.Backend {
	t.Helper()
	b, err := blob.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
