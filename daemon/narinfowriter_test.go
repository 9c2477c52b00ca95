package daemon

import (
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/localcache"
)

// TestNarInfoWriterKeepsOrderPerPath records misses and hits for a few paths in turn,
// against a cache whose writes take varying time. Whatever the timing, the last entry
// recorded for a path must be the one that stays, no two writes for a path may overlap,
// and close must leave nothing unwritten.
func TestNarInfoWriterKeepsOrderPerPath(t *testing.T) {
	var mu sync.Mutex
	stored := map[string]localcache.NarInfoEntry{}
	busy := map[string]bool{}
	writes := 0
	put := func(h string, e localcache.NarInfoEntry) error {
		mu.Lock()
		if busy[h] {
			mu.Unlock()
			return fmt.Errorf("two writes for %s at once", h)
		}
		busy[h] = true
		writes++
		n := writes
		mu.Unlock()
		time.Sleep(time.Duration(n%3) * time.Millisecond) // some writes are slow
		mu.Lock()
		stored[h], busy[h] = e, false
		mu.Unlock()
		return nil
	}
	errs := &testkit.SyncBuffer{}
	w := newNarInfoWriter(put, slog.New(slog.NewTextHandler(errs, nil)))
	want := map[string]localcache.NarInfoEntry{}
	for i := range 2000 {
		h := fmt.Sprintf("path-%d", i%7)
		e := localcache.NarInfoEntry{Negative: i%2 == 0, Reason: fmt.Sprint(i)}
		w.record(h, e)
		want[h] = e
	}
	w.close()
	if errs.String() != "" {
		t.Fatalf("writer logged errors:\n%s", errs)
	}
	for h, e := range want {
		if got := stored[h]; got.Reason != e.Reason || got.Negative != e.Negative {
			t.Errorf("%s: stored %+v, last recorded %+v", h, got, e)
		}
	}
	// After close, a record still lands, at once.
	w.record("late", localcache.NarInfoEntry{Reason: "late"})
	if stored["late"].Reason != "late" {
		t.Error("a record after close was not written")
	}
}
