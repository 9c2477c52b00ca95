package fetch

import (
	"context"
	"log/slog"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
)

// cacheSource is the local cache as the first source of manifests and chunks: what it
// holds costs nothing, and what the other sources supply is kept in it.
type cacheSource struct {
	c   *localcache.Cache
	log *slog.Logger
}

var _ Source = cacheSource{}

func (s cacheSource) Name() string { return "cache" }
func (s cacheSource) Kind() Kind   { return Local }

func (s cacheSource) Manifest(_ context.Context, narHash [32]byte) ([]byte, error) {
	return s.c.GetManifest(manifest.Key(narHash))
}

// RejectManifest does nothing: a cached manifest is either verified or was kept by a
// job that then failed, and the job that finds it failing again fetches anew.
func (s cacheSource) RejectManifest([32]byte, error) {}

func (s cacheSource) Open(context.Context, *manifest.Manifest) (Offer, error) { return s, nil }

func (s cacheSource) Holds(ids []chunk.ID) ([]bool, error) { return s.c.HasChunks(ids) }

func (s cacheSource) Chunk(ctx context.Context, e manifest.Entry) (Object, error) {
	obj, err := s.c.GetChunk(ctx, e.ID)
	return Object{Frame: obj}, err
}

func (s cacheSource) Delta(ctx context.Context, id chunk.ID, bases []chunk.ID) ([]byte, error) {
	return NoDeltas{}.Delta(ctx, id, bases)
}

// Reject drops a rotten chunk, so the next request fetches it again.
func (s cacheSource) Reject(id chunk.ID, _ error) {
	if err := s.c.DeleteChunk(id); err != nil {
		s.log.Warn("dropping a corrupt local chunk", "chunk", id.String(), "err", err)
	}
}
