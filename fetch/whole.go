package fetch

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
)

// Upstream is where whole NARs come from: plain binary caches, the only source that
// needs no manifest.
type Upstream struct {
	Caches []*nixcache.BinaryCache
	Keys   *nixcache.Keyring
	Log    *slog.Logger
	// LookupTimeout bounds asking the upstreams for their narinfo (default 10s).
	LookupTimeout time.Duration
}

// Locate returns the upstream that serves the whole NAR ni describes, and the narinfo
// whose URL and compression to use there; nil when none does. from names the cache
// ni came from: an upstream serves the NAR its own narinfo names; a narinfo from
// elsewhere (the chunk store, a peer) names no NAR file there, so the upstreams are
// asked for theirs, which must describe the same NAR and carry a trusted signature.
func (u Upstream) Locate(ctx context.Context, ni *nixcache.NarInfo, from string) (*nixcache.BinaryCache, *nixcache.NarInfo) {
	for _, c := range u.Caches {
		if c.String() == from {
			return c, ni
		}
	}
	timeout := u.LookupTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, c := range u.Caches {
		uni, err := c.NarInfo(ctx, ni.HashPart())
		if err != nil {
			continue
		}
		if uni.NarHash != ni.NarHash || uni.NarSize != ni.NarSize {
			if u.Log != nil {
				u.Log.Warn("upstream describes a different NAR for the path", "upstream", c.String(), "path", ni.StorePath)
			}
			continue
		}
		if u.Keys == nil {
			continue
		}
		if _, err := u.Keys.Verify(uni); err != nil {
			continue
		}
		return c, uni
	}
	return nil, nil
}

// wholeNAR locates the whole NAR for one request once, on first need: a NAR whose
// chunks are all local never pays the round trip.
type wholeNAR struct {
	up   Upstream
	req  Request
	once sync.Once
	c    *nixcache.BinaryCache
	ni   *nixcache.NarInfo
}

func (w *wholeNAR) get(ctx context.Context) (*nixcache.BinaryCache, *nixcache.NarInfo) {
	w.once.Do(func() { w.c, w.ni = w.up.Locate(ctx, w.req.Info, w.req.From) })
	return w.c, w.ni
}

// fromWhole streams the whole NAR from the upstream, verifying it while cutting it into
// chunks that are kept, so later versions of the package can reuse them.
func (f *Fetcher) fromWhole(ctx context.Context, bc *nixcache.BinaryCache, ni *nixcache.NarInfo, p *Progress, gen int) (*manifest.Manifest, error) {
	nar, err := bc.OpenNAR(ctx, ni)
	if err != nil {
		return nil, err
	}
	defer nar.Close()
	// Build hashes what it reads; the limit stops an upstream that sends more than the
	// narinfo promised, and the check after Build does the rest.
	vr := io.LimitReader(nar, int64(ni.NarSize)+1)
	var batch []localcache.ChunkPut
	var pending []manifest.Entry
	var batchBytes int
	flush := func() error {
		if len(batch) > 0 {
			if err := f.Cache.PutChunks(ctx, batch); err != nil {
				return fmt.Errorf("keeping chunks: %w", err)
			}
			batch, batchBytes = batch[:0], 0
		}
		p.publish(gen, pending...)
		pending = pending[:0]
		return nil
	}
	m, err := manifest.Build(ctx, vr, f.Params, func(id chunk.ID, raw []byte) (int, error) {
		obj := f.Codec.Encode(nil, raw)
		// Leased before it is stored, so eviction can't take it before it is served.
		p.lease.Add(id)
		batch = append(batch, localcache.ChunkPut{ID: id, Obj: obj})
		batchBytes += len(obj)
		pending = append(pending, manifest.Entry{ID: id, Size: uint32(len(raw)), StoredSize: uint32(len(obj))})
		if len(batch) >= 64 || batchBytes >= 16<<20 {
			if err := flush(); err != nil {
				return 0, err
			}
		}
		return len(obj), nil
	})
	f.count("upstream", int64(ni.FileSize))
	if err != nil {
		return nil, err
	}
	if m.NarHash != ni.NarHash || m.NarSize != ni.NarSize {
		return nil, fmt.Errorf("got %d bytes hashing sha256:%s: %w", m.NarSize, manifest.Key(m.NarHash), nixcache.ErrNarMismatch)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	raw, err := m.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if err := f.Cache.PutManifest(p.Key, raw); err != nil {
		return nil, fmt.Errorf("keeping manifest: %w", err)
	}
	if err := f.Cache.MarkVerified(p.Key, sha256.Sum256(raw)); err != nil {
		return nil, err
	}
	return m, nil
}
