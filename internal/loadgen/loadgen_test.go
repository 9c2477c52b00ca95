package loadgen

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
)

func TestRunCountsAndLogs(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if strings.HasSuffix(r.URL.Path, "missing.nar.xz") {
			http.NotFound(w, r)
			return
		}
		w.Write(bytes.Repeat([]byte("x"), 1000))
	}))
	defer srv.Close()
	targets := []Target{{Path: "/nar/a.nar.xz", NarSize: 5000}, {Path: "/nar/missing.nar.xz", NarSize: 7000}}
	var log bytes.Buffer
	res, err := Run(context.Background(), Config{BaseURL: srv.URL, Targets: targets, Concurrency: 4, Requests: 50, Seed: 1, AccessLog: &log})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 50 || hits.Load() != 50 || res.ByStatus[200]+res.ByStatus[404] != 50 || res.Errors != 0 {
		t.Fatalf("result %+v, server saw %d", res, hits.Load())
	}
	if res.NarBytes != int64(res.ByStatus[200])*5000 {
		t.Errorf("NAR bytes %d for %d whole NARs", res.NarBytes, res.ByStatus[200])
	}
	combined := regexp.MustCompile(`^127\.0\.0\.1 - - \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "GET /nar/\w+\.nar\.xz HTTP/1\.1" (200|404) \d+ "-" "shoal-serve-load"$`)
	lines := strings.Split(strings.TrimSuffix(log.String(), "\n"), "\n")
	if len(lines) != 50 {
		t.Fatalf("%d log lines", len(lines))
	}
	for _, l := range lines {
		if !combined.MatchString(l) {
			t.Fatalf("not an nginx combined line: %q", l)
		}
	}
	// The same seed asks for the same sequence.
	again, _ := Run(context.Background(), Config{BaseURL: srv.URL, Targets: targets, Concurrency: 1, Requests: 50, Seed: 1})
	if fmt.Sprint(again.ByStatus) != fmt.Sprint(res.ByStatus) {
		t.Errorf("seeded runs differ: %v vs %v", again.ByStatus, res.ByStatus)
	}
}
