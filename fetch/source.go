package fetch

import (
	"context"
	"fmt"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
)

// Kind says what a source's chunks cost, which is all the planner needs to know about
// it to price a NAR.
type Kind int

const (
	// Local sources are on this machine (the local cache, /nix/store): their chunks
	// cost no network, and they can say exactly which chunks they hold.
	Local Kind = iota
	// Peer sources are other shoal daemons: their chunks cost the chunk store and the
	// upstream nothing, but asking which they hold takes a round trip.
	Peer
	// Remote sources (the chunk store) are priced by the stored size of each object.
	Remote
)

func (k Kind) String() string {
	switch k {
	case Local:
		return "local"
	case Peer:
		return "peer"
	case Remote:
		return "remote"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Source is one place a NAR's manifest and chunks can come from: the local cache, the
// local /nix/store, peers, the chunk store. Every answer is untrusted: a manifest is
// used only if the NAR it assembles matches the signed narinfo, and every chunk is
// checked against its ID before it is kept or used.
type Source interface {
	// Name is short, for logs and metrics ("store", "peer", "localstore").
	Name() string
	Kind() Kind
	// Manifest returns the encoded manifest the source has for the NAR with this
	// NarHash; errors.Is(err, shoal.ErrNotFound) when it has none.
	Manifest(ctx context.Context, narHash [32]byte) ([]byte, error)
	// RejectManifest says that a manifest the source returned did not assemble into
	// its NAR (or did not parse): a source that trusts whoever sent it stops.
	RejectManifest(narHash [32]byte, err error)
	// Open readies the source to supply the chunks m lists. Peers ask here, once per
	// NAR, which of them hold it; the Offer is used until ctx ends.
	Open(ctx context.Context, m *manifest.Manifest) (Offer, error)
}

// Offer is one source's supply of chunks for one NAR.
type Offer interface {
	// Holds reports, per ID, whether the source expects to supply the chunk: exactly
	// for local sources, "all or nothing" for peers, "all" for the chunk store.
	Holds(ids []chunk.ID) ([]bool, error)
	// Chunk returns entry e's chunk as the source keeps it; errors.Is(err,
	// shoal.ErrNotFound) when it lacks it.
	Chunk(ctx context.Context, e manifest.Entry) (Object, error)
	// Delta returns chunk id compressed against the concatenated base chunks (see
	// chunk.DeltaCodec); errors.Is(err, shoal.ErrNotFound) from sources that have no
	// delta for it, or serve none.
	Delta(ctx context.Context, id chunk.ID, bases []chunk.ID) ([]byte, error)
	// Reject says that an object (a chunk by its ID, or a delta by its target's or its
	// own ID) failed its check. The source stops trusting whoever supplied it (a peer
	// is dropped, a rotten local copy deleted), so asking again goes elsewhere.
	Reject(id chunk.ID, err error)
}

// Object is a chunk as a source keeps it: a stored object (one zstd frame, as the
// chunk store and the local cache keep chunks) or the raw bytes (as /nix/store holds
// them). Exactly one is set.
type Object struct {
	Frame []byte
	Raw   []byte

	// rebuilt: Raw was rebuilt from a chain of a delta-primary store, which read
	// wire bytes for it (and its window's other chunks).
	rebuilt bool
	wire    int64
}

// size is what the object costs on the wire, for the byte counters.
func (o Object) size() int {
	if o.rebuilt {
		return int(o.wire)
	}
	return len(o.Frame) + len(o.Raw)
}

// NoManifests can be embedded by a Source that keeps chunks but no manifests.
type NoManifests struct{}

func (NoManifests) Manifest(context.Context, [32]byte) ([]byte, error) {
	return nil, fmt.Errorf("no manifests here: %w", shoal.ErrNotFound)
}
func (NoManifests) RejectManifest([32]byte, error) {}

// NoDeltas can be embedded by an Offer whose source serves no deltas.
type NoDeltas struct{}

func (NoDeltas) Delta(_ context.Context, id chunk.ID, _ []chunk.ID) ([]byte, error) {
	return nil, fmt.Errorf("delta for chunk %s: source serves none: %w", id, shoal.ErrNotFound)
}
