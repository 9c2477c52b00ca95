// Package testkit holds test scaffolding that several packages' tests need and that
// has nothing to do with Nix (internal/nixtest) or caches (internal/cachetest): a log
// buffer safe to write from many goroutines, and a leak check that counts what a test
// left running.
package testkit

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

// SyncBuffer collects log output written from many goroutines, for assertions.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Resources counts what a leak would leave behind: goroutines, and open file
// descriptors where /proc shows them (elsewhere only goroutines are counted).
func Resources(t testing.TB) (goroutines, fds int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return runtime.NumGoroutine(), len(ents)
}

// Settle waits until the counts drop back to the baseline g0, fd0 taken with
// Resources, or reports what is left with every goroutine's stack. Background work
// (a stalled source's timeout, libp2p winding connections down) ends on its own, so
// the loop waits for it rather than asserting on timing.
func Settle(t testing.TB, g0, fd0 int) {
	t.Helper()
	var g, fd int
	for range 200 {
		g, fd = Resources(t)
		if g <= g0 && fd <= fd0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	t.Errorf("leak: %d goroutines (was %d), %d fds (was %d)\n%s", g, g0, fd, fd0, buf[:n])
}

// RandomBytes returns n pseudo-random bytes from seed: the same bytes every run, so a
// failure repeats, and incompressible, so chunks and NARs behave like binaries.
func RandomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}
