// Package progress prints progress lines for long commands whose stderr is not a
// terminal (a service's journal, CI, a file): a bar there prints nothing useful, and
// a publish of a large cache runs for hours.
package progress

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// Meter counts items and bytes done against their totals and prints a line at most
// every interval, when Add or ItemDone is called.
type Meter struct {
	w          io.Writer
	what, unit string // "publishing", "NARs"
	every      time.Duration
	now        func() time.Time

	mu                sync.Mutex
	items, totalItems int
	bytes, totalBytes int64
	start, last       time.Time
}

// New starts a meter. totalBytes may be 0 when unknown; now is time.Now outside
// tests.
func New(w io.Writer, what, unit string, totalItems int, totalBytes int64, every time.Duration, now func() time.Time) *Meter {
	t := now()
	return &Meter{w: w, what: what, unit: unit, every: every, now: now, totalItems: totalItems, totalBytes: totalBytes, start: t, last: t}
}

// Add counts n bytes done.
func (m *Meter) Add(n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.bytes += n
	m.maybePrint()
}

// SetBytes records a running total of bytes done, for callers that count it
// themselves; totals reported out of order never move it back.
func (m *Meter) SetBytes(done int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.bytes = max(m.bytes, done)
	m.maybePrint()
}

// ItemDone counts one item done.
func (m *Meter) ItemDone() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.items++
	m.maybePrint()
}

// Finish prints the final line.
func (m *Meter) Finish() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.print(m.now())
}

func (m *Meter) maybePrint() {
	if t := m.now(); t.Sub(m.last) >= m.every {
		m.print(t)
	}
}

func (m *Meter) print(t time.Time) {
	m.last = t
	elapsed := t.Sub(m.start)
	line := fmt.Sprintf("%s: %d of %d %s", m.what, m.items, m.totalItems, m.unit)
	if m.totalBytes == 0 && m.bytes == 0 {
		// Counted in items only.
		if elapsed > 0 && m.items > 0 && m.items < m.totalItems {
			eta := elapsed * time.Duration(m.totalItems-m.items) / time.Duration(m.items)
			line += ", ETA " + eta.Round(time.Second).String()
		}
		fmt.Fprintln(m.w, line)
		return
	}
	if m.totalBytes > 0 {
		line += fmt.Sprintf(", %.1f of %.1f MB (%.0f%%)", float64(m.bytes)/1e6, float64(m.totalBytes)/1e6, 100*float64(m.bytes)/float64(m.totalBytes))
	} else {
		line += fmt.Sprintf(", %.1f MB", float64(m.bytes)/1e6)
	}
	if elapsed > 0 {
		rate := float64(m.bytes) / elapsed.Seconds()
		line += fmt.Sprintf(", %.1f MB/s", rate/1e6)
		if m.totalBytes > 0 && m.bytes > 0 && m.bytes < m.totalBytes {
			eta := time.Duration(float64(m.totalBytes-m.bytes) / rate * float64(time.Second))
			line += ", ETA " + eta.Round(time.Second).String()
		}
	}
	fmt.Fprintln(m.w, line)
}
