package progress

import (
	"strings"
	"testing"
	"time"
)

func TestMeterPrintsAtMostEveryInterval(t *testing.T) {
	clock := time.Unix(0, 0)
	now := func() time.Time { return clock }
	var out strings.Builder
	m := New(&out, "publishing", "NARs", 4, 400e6, 10*time.Second, now)
	clock = clock.Add(5 * time.Second)
	m.Add(50e6) // not due yet
	clock = clock.Add(5 * time.Second)
	m.Add(50e6)
	m.ItemDone() // due, but printed 0 s ago
	clock = clock.Add(10 * time.Second)
	m.ItemDone()
	clock = clock.Add(time.Second)
	m.Finish()
	want := []string{
		"publishing: 0 of 4 NARs, 100.0 of 400.0 MB (25%), 10.0 MB/s, ETA 30s",
		"publishing: 2 of 4 NARs, 100.0 of 400.0 MB (25%), 5.0 MB/s, ETA 1m0s",
		"publishing: 2 of 4 NARs, 100.0 of 400.0 MB (25%), 4.8 MB/s, ETA 1m3s",
	}
	if got := strings.Split(strings.TrimSpace(out.String()), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestMeterOfItemsOnly(t *testing.T) {
	clock := time.Unix(0, 0)
	var out strings.Builder
	m := New(&out, "measuring deltas", "upgrades", 4, 0, time.Second, func() time.Time { return clock })
	clock = clock.Add(2 * time.Second)
	m.ItemDone()
	clock = clock.Add(6 * time.Second)
	m.ItemDone()
	m.ItemDone()
	m.ItemDone()
	m.Finish()
	want := "measuring deltas: 1 of 4 upgrades, ETA 6s\nmeasuring deltas: 2 of 4 upgrades, ETA 8s\nmeasuring deltas: 4 of 4 upgrades\n"
	if out.String() != want {
		t.Errorf("got\n%swant\n%s", out.String(), want)
	}
}
