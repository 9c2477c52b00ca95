package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/shoal-nix/shoal/nixstore"
)

// startSeeding opens the local store as a chunk source (see chunkSources).
func (d *Daemon) startSeeding() error {
	if d.cfg.SeedStore == "" {
		return nil
	}
	if fi, err := os.Stat(d.cfg.SeedStore); err != nil || !fi.IsDir() {
		// A machine without Nix installed yet has nothing to seed from.
		d.log.Info("not seeding from the local store: no store directory", "dir", d.cfg.SeedStore)
		return nil
	}
	s, err := nixstore.New(d.cache, d.cfg.Params, nixstore.Options{Dir: d.cfg.SeedStore, Log: d.log.With("component", "localstore")})
	if err != nil {
		return fmt.Errorf("local store source: %w", err)
	}
	d.local = s
	return nil
}

// seedFor indexes the installed versions of storePath's package other than itself, so
// that pricing and assembling its NAR count their chunks as local. It reports whether
// any such version is indexed: with one, the NAR is no first install, and chunks may
// beat the whole NAR.
func (d *Daemon) seedFor(ctx context.Context, storePath string) bool {
	if d.local == nil {
		return false
	}
	if d.cfg.SeedRelated > 0 && d.local.SeedRelated(ctx, storePath, d.cfg.SeedRelated) > 0 {
		return true
	}
	// Versions given to `shoal seed` count too.
	return d.local.AnySeeded(storePath)
}

// SeedRequest is the body of /shoal/seed.
type SeedRequest struct {
	Paths []string `json:"paths"`
}

// SeedReply answers /shoal/seed, one result per path in order.
type SeedReply struct {
	Results []SeedResult `json:"results"`
}

// SeedResult is what seeding did with one path.
type SeedResult struct {
	Path    string `json:"path"`
	Indexed bool   `json:"indexed"` // false: it was indexed already
	NarSize uint64 `json:"nar_size,omitempty"`
	Chunks  int    `json:"chunks,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Seed indexes the given store paths in the local store; a path that fails is reported
// in its result and does not stop the others.
func (d *Daemon) Seed(ctx context.Context, paths []string) (SeedReply, error) {
	if d.local == nil {
		return SeedReply{}, errors.New("seeding is off: the daemon runs without --seed-store")
	}
	return SeedPaths(ctx, d.local, paths), nil
}

// SeedPaths indexes paths with s, for the daemon's admin API and for `shoal seed` when
// no daemon holds the cache.
func SeedPaths(ctx context.Context, s *nixstore.Store, paths []string) SeedReply {
	var reply SeedReply
	for _, p := range paths {
		res, err := s.Seed(ctx, p)
		r := SeedResult{Path: p, Indexed: res.Indexed, NarSize: res.NarSize, Chunks: res.Chunks}
		if err != nil {
			r.Error = err.Error()
		}
		reply.Results = append(reply.Results, r)
	}
	return reply
}

func (d *Daemon) serveSeed(w http.ResponseWriter, r *http.Request, reply func(any, error)) {
	var req SeedRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20)).Decode(&req); err != nil {
		reply(nil, fmt.Errorf("reading request: %w", err))
		return
	}
	reply(d.Seed(r.Context(), req.Paths))
}
