package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunkstore"
)

// A wrong --store (a missing directory, a plain binary cache, a typo in a URL)
// otherwise costs nothing visible: every NAR quietly comes whole from the upstream.
// So the store's shoal-store.json is read at start. A store on this machine must
// answer then, or the daemon refuses to start; a remote one may be unreachable while
// the network is down, so it is checked in the background, loudly, until it answers.

// storeRetry bounds the wait between checks of a remote store that did not answer
// or did not look like a chunk store.
const (
	storeRetryMin = 10 * time.Second
	storeRetryMax = 10 * time.Minute
)

// storeHealth is what the last check of the store found.
type storeHealth struct {
	mu      sync.Mutex
	checked bool
	problem string // empty once the store was found good
}

func (h *storeHealth) set(problem string) {
	h.mu.Lock()
	h.checked, h.problem = true, problem
	h.mu.Unlock()
}

// get returns the problem, or "" for a good or not yet checked store.
func (h *storeHealth) get() (problem string, checked bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.problem, h.checked
}

// isLocalStore tells a store on this machine (a directory or file:// URL) from one
// reached over the network.
func isLocalStore(rawURL string) bool {
	return !strings.Contains(rawURL, "://") || strings.HasPrefix(rawURL, "file://")
}

// checkStore reads the store's metadata and describes what is wrong with it.
func checkStore(ctx context.Context, s *chunkstore.Store) (*chunkstore.Meta, error) {
	m, err := s.Meta(ctx)
	if errors.Is(err, shoal.ErrNotFound) {
		return nil, fmt.Errorf("%s is not a chunk store: it has no %s (shoal publish --to writes one); without it every NAR comes whole from the upstream", s, chunkstore.MetaKey)
	}
	return m, err
}

// checkLocalStore refuses to start on a local store that is not one.
func (d *Daemon) checkLocalStore() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := checkStore(ctx, d.store)
	if err != nil {
		return fmt.Errorf("--store: %w", err)
	}
	d.storeHealth.set("")
	d.log.Info("chunk store checked", "store", d.store.String(), "published_from", m.Source, "chunker", m.Chunker)
	return nil
}

// watchStore checks a remote store until it answers as a chunk store, logging an
// error for each failed check, so a wrong URL shows in the log and in shoal status.
func (d *Daemon) watchStore(ctx context.Context) {
	wait := storeRetryMin
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		m, err := checkStore(cctx, d.store)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			d.storeHealth.set("")
			d.log.Info("chunk store checked", "store", d.store.String(), "published_from", m.Source, "chunker", m.Chunker)
			return
		}
		d.storeHealth.set(err.Error())
		d.log.Error("chunk store unusable: NARs come whole from the upstream until it answers", "store", d.store.String(), "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, storeRetryMax)
	}
}
