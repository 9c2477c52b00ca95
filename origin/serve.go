// Package origin is `shoal serve`: an HTTP service that answers the NAR URLs of a
// binary cache's original narinfos by reassembling the NARs from a chunk store, for a
// fleet of clients behind a CDN. It is the fallback for NAR files retired from the
// main cache (see docs/serve.md): the narinfos stay where they were, clients keep
// asking for the same URLs, and whatever the main cache no longer has is rebuilt here.
//
// Every NAR is checked before its first byte is sent: the narinfo must verify with a
// trusted key, and the NAR the manifest's chunks make must match its NarHash and
// NarSize. That proof is remembered per (NarHash, manifest), so later requests only
// check each chunk against its ID as it streams; a chunk that fails then cuts the
// connection short of its Content-Length, which no client takes for a whole NAR.
package origin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/chunkstore/chain"
	"github.com/shoal-nix/shoal/internal/lru"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"golang.org/x/sync/singleflight"
)

// Options tune a Server.
type Options struct {
	// Keys are the keys a narinfo must be signed by to be served.
	Keys *nixcache.Keyring
	// MaxActive bounds the NAR requests being verified or streamed at once; the rest
	// wait in line (0 means 64). Each active request holds at most Prefetch chunks.
	MaxActive int
	// QueueTimeout bounds how long a request waits for a slot before it gets 503
	// (0 means 30s).
	QueueTimeout time.Duration
	// ChunkCacheBytes bounds the in-memory cache of hot chunk objects (0 means 256 MiB;
	// negative turns it off), and as much again the frames of chunks rebuilt from a
	// delta-primary store's chains.
	ChunkCacheBytes int64
	// Prefetch is how many chunks a request fetches ahead of what it sends (0 means 8).
	Prefetch int
	// HotBaseBytes bounds the decoded chunks kept for rebuilding chunks of a
	// delta-primary store from their chains (0 means 128 MiB; negative keeps none): the
	// previous releases' chunks that the next request's deltas decode against.
	HotBaseBytes int64
	// Metrics receives counters; nil makes new ones.
	Metrics *Metrics
	// Logger receives one line per failure; nil discards.
	Logger *slog.Logger
}

const (
	// bodyCacheControl: a NAR URL names its content (by FileHash or NarHash), so its
	// bytes never change; edges may keep them as long as they like.
	bodyCacheControl = "public, max-age=31536000, immutable"
	// missCacheControl: a miss may become a hit when a publish adds the path, and the
	// main cache may answer it again later; edges should ask again soon.
	missCacheControl = "public, max-age=60"
	// resolvedTTL bounds how long a resolved narinfo and manifest are reused without
	// asking the store, so a garbage collection is noticed within a minute.
	resolvedTTL = time.Minute
	// missTTL is how long a miss, or a failed verification, is remembered: a CDN edge
	// asks again for each client until it caches the answer itself, and a URL's first
	// publish (or a repaired store) may wait this long.
	missTTL = 10 * time.Second
	// verifyTimeout bounds the shared verification of a NAR, which outlives the
	// request that started it (others may be waiting for it).
	verifyTimeout = 30 * time.Minute
)

// Server answers NAR requests from a chunk store.
type Server struct {
	st       *chunkstore.Store
	keys     *nixcache.Keyring
	codec    *chunk.Codec
	fast     *chunk.Codec           // encodes rebuiltFrame's frames
	packs    *chunkstore.PackReader // reads packed manifests' objects, coalesced
	chains   *chain.Resolver        // rebuilds version 4 manifests' chunks from their chains
	metrics  *Metrics
	log      *slog.Logger
	slots    chan struct{}
	queueMax time.Duration
	prefetch int

	queued   atomic.Int64
	chunks   *lru.Cache[chunk.ID, *cached]   // verified chunks
	frames   *lru.Cache[chunk.ID, []byte]    // rebuiltFrame's frames
	resolved *lru.Cache[string, *nar]        // URL -> narinfo and manifest
	proven   *lru.Cache[provenKey, []uint32] // manifests proven to make their NarHash, with nar.frames
	missing  *lru.Cache[string, error]       // URLs found absent, for missTTL
	bufs     sync.Pool                       // *[]byte for decoded chunks
	flight   singleflight.Group              // one resolution and verification per URL at a time
	life     context.Context                 // cancelled by Close
	end      context.CancelFunc
	work     sync.WaitGroup // shared verifications in flight
}

// provenKey names a proof that a manifest (by its BLAKE3 trailer) assembles to NarHash.
type provenKey struct {
	narHash, manifestSum [32]byte
}

// New returns a server on st; Close releases its codec.
func New(st *chunkstore.Store, opts Options) (*Server, error) {
	if opts.Keys == nil {
		return nil, errors.New("serve: no trusted public keys")
	}
	if opts.MaxActive <= 0 {
		opts.MaxActive = 64
	}
	if opts.QueueTimeout <= 0 {
		opts.QueueTimeout = 30 * time.Second
	}
	if opts.ChunkCacheBytes == 0 {
		opts.ChunkCacheBytes = 256 << 20
	}
	if opts.Prefetch <= 0 {
		opts.Prefetch = 8
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	codec, err := chunk.NewCodec()
	if err != nil {
		return nil, err
	}
	fast, err := chunk.NewCodecLevel(zstd.SpeedFastest)
	if err != nil {
		codec.Close()
		return nil, err
	}
	packs, err := chunkstore.NewPackReader(st, chunkstore.ReadOptions{Parallel: min(opts.Prefetch, 8)})
	if err != nil {
		codec.Close()
		fast.Close()
		return nil, err
	}
	chains := chain.New(st, packs, chain.Options{CacheBytes: opts.HotBaseBytes})
	s := &Server{
		st: st, keys: opts.Keys, codec: codec, fast: fast, packs: packs, chains: chains, metrics: opts.Metrics, log: opts.Logger,
		slots: make(chan struct{}, opts.MaxActive), queueMax: opts.QueueTimeout, prefetch: opts.Prefetch,
		chunks:   lru.New[chunk.ID, *cached](max(opts.ChunkCacheBytes, 0), 0),
		frames:   lru.New[chunk.ID, []byte](max(opts.ChunkCacheBytes, 0), 0),
		resolved: lru.New[string, *nar](64<<20, resolvedTTL),
		proven:   lru.New[provenKey, []uint32](8<<20, 0),
		missing:  lru.New[string, error](4<<20, missTTL),
	}
	s.life, s.end = context.WithCancel(context.Background())
	s.metrics.mu.Lock()
	s.metrics.gauges = s.gauges
	s.metrics.mu.Unlock()
	return s, nil
}

// Close stops shared verifications still running and releases the server's decoder.
// Requests must have ended (http.Server.Shutdown) before.
func (s *Server) Close() {
	s.end()
	s.work.Wait()
	s.codec.Close()
	s.fast.Close()
	s.packs.Close()
}

// Metrics returns the server's counters.
func (s *Server) Metrics() *Metrics { return s.metrics }

func (s *Server) gauges() []gauge {
	n, cost := s.chunks.Size()
	return []gauge{
		{"shoal_serve_active_requests", "NAR requests being verified or streamed.", int64(len(s.slots))},
		{"shoal_serve_queued_requests", "NAR requests waiting for a slot.", s.queued.Load()},
		{"shoal_serve_chunk_cache_bytes", "Bytes of chunk objects in the in-memory cache.", cost},
		{"shoal_serve_chunk_cache_chunks", "Chunks in the in-memory cache.", int64(n)},
	}
}

// nar is a narinfo and the manifest that assembles its NAR.
type nar struct {
	info    *nixcache.NarInfo
	man     *manifest.Manifest
	manSum  [32]byte
	enc     encoding
	etag    string
	storedN uint64 // the zstd body's length
	// frames is, for a delta-primary store's manifest (version 4), the length of each
	// entry's frame in the zstd body, learned when the NAR was verified; nil otherwise.
	frames []uint32
}

// statusError carries the HTTP status a failure maps to.
type statusError struct {
	status int
	err    error
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }

func notHere(format string, a ...any) error {
	return &statusError{http.StatusNotFound, fmt.Errorf(format, a...)}
}

func broken(format string, a ...any) error {
	return &statusError{http.StatusBadGateway, fmt.Errorf(format, a...)}
}

func statusOf(err error) int {
	var se *statusError
	if errors.As(err, &se) {
		return se.status
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

// resolve finds the narinfo whose URL is key and its manifest, and checks everything
// that can be checked without the chunks. A URL the store does not index, or whose
// narinfo is absent, names another URL, or is not signed by a trusted key, is a miss:
// for a client, an untrusted narinfo is as good as none.
func (s *Server) resolve(ctx context.Context, key string) (*nar, error) {
	hp, err := s.st.NarURL(ctx, key)
	if errors.Is(err, shoal.ErrNotFound) {
		return nil, notHere("%s is not in the store's NAR URL index", key)
	}
	if err != nil {
		return nil, broken("looking up %s: %w", key, err)
	}
	raw, err := s.st.NarInfo(ctx, hp)
	if errors.Is(err, shoal.ErrNotFound) {
		return nil, notHere("%s: the index names %s.narinfo, which the store lacks", key, hp)
	}
	if err != nil {
		return nil, broken("%s: %w", key, err)
	}
	info, err := nixcache.ParseNarInfo(raw)
	if err != nil {
		return nil, broken("%s: parsing %s.narinfo: %w", key, hp, err)
	}
	if info.HashPart() != hp || info.URL != key {
		return nil, notHere("%s: %s.narinfo names %s (URL %s)", key, hp, info.StorePath, info.URL)
	}
	if _, err := s.keys.Verify(info); err != nil {
		s.metrics.untrusted()
		return nil, notHere("%s: %w", key, err)
	}
	enc, err := encodingOf(info)
	if err != nil {
		return nil, err
	}
	m, rawMan, err := s.st.Manifest(ctx, info.NarHash)
	if err != nil {
		return nil, broken("%s: %w", key, err)
	}
	if m.NarSize != info.NarSize {
		return nil, broken("%s: manifest says %d bytes, narinfo %d", key, m.NarSize, info.NarSize)
	}
	if _, err := chunk.ParseIdentity(m.Chunker); err != nil {
		return nil, broken("%s: manifest: %w", key, err)
	}
	n := &nar{info: info, man: m, enc: enc}
	n.storedN = n.zstdBodySize()
	copy(n.manSum[:], rawMan[len(rawMan)-32:])
	n.etag = `"` + manifest.Key(info.NarHash) + "-" + enc.name + `"`
	return n, nil
}

// prepare resolves key and proves its NAR, once for all concurrent requests.
func (s *Server) prepare(ctx context.Context, key string) (*nar, error) {
	if n, ok := s.resolved.Get(key); ok {
		return n, nil
	}
	if err, ok := s.missing.Get(key); ok {
		return nil, err
	}
	ch := s.flight.DoChan(key, func() (any, error) {
		// The work outlives the request that started it (others may be waiting), not
		// the server: Close cancels it and waits.
		s.work.Add(1)
		defer s.work.Done()
		wctx, cancel := context.WithTimeout(s.life, verifyTimeout)
		defer cancel()
		n, err := s.resolve(wctx, key)
		if err != nil {
			if statusOf(err) == http.StatusNotFound {
				s.missing.Add(key, err, int64(100+len(key)))
			}
			return nil, err
		}
		pk := provenKey{n.info.NarHash, n.manSum}
		if frames, ok := s.proven.Get(pk); ok {
			n.setFrames(frames)
		} else {
			start := time.Now()
			if err := s.verify(wctx, n); err != nil {
				s.metrics.verified(false)
				// A NAR that failed its check fails again until the store is
				// repaired; remembering that for missTTL keeps a CDN's retries
				// from re-reading the whole NAR each time.
				s.missing.Add(key, err, int64(100+len(key)))
				return nil, err
			}
			s.metrics.verified(true)
			s.log.Info("NAR verified", "url", key, "path", n.info.StorePath, "nar_bytes", n.info.NarSize, "chunks", len(n.man.Entries), "took", time.Since(start).Round(time.Millisecond))
			s.proven.Add(pk, n.frames, int64(100+4*len(n.frames)))
		}
		s.resolved.Add(key, n, int64(200+len(n.info.Raw)+48*len(n.man.Entries)))
		return n, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*nar), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// verify assembles the NAR from its chunks and checks it against the narinfo. For a
// delta-primary store's NAR it also measures the zstd frame each rebuilt chunk gets in
// the zstd body (setFrames), so that body's length is known before it is sent.
func (s *Server) verify(ctx context.Context, n *nar) error {
	var frames []uint32
	if n.man.Chained() && n.enc == encZstd {
		frames = make([]uint32, len(n.man.Entries))
	}
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(s.each(ctx, n, 0, true, n.enc != encZstd, func(i int, obj, raw []byte) error {
			if frames != nil {
				// each gave the zstd body's piece: the chunk object or its frame.
				frames[i] = uint32(len(obj))
			}
			_, err := pw.Write(raw)
			return err
		}))
	}()
	_, err := io.Copy(io.Discard, nixcache.NewVerifyingReader(pr, n.info.NarHash, n.info.NarSize))
	pr.Close()
	<-done
	if err != nil {
		var se *statusError
		if errors.As(err, &se) {
			return err
		}
		return broken("%s: %w", n.info.StorePath, err)
	}
	n.setFrames(frames)
	return nil
}

// setFrames records the zstd body's frame lengths (nil: the stored objects').
func (n *nar) setFrames(frames []uint32) {
	n.frames = frames
	n.storedN = n.zstdBodySize()
}

// rebuiltFrame is the zstd frame the zstd body carries for a chunk a delta-primary store
// keeps no chunk object of: encoded at the fastest level, which costs the server little
// and, being deterministic, gives the same length every time, so the body's length and
// ranges hold across requests.
func (s *Server) rebuiltFrame(raw []byte) []byte { return s.fast.Encode(nil, raw) }

// each calls fn with entry i's verified stored object and, with needRaw, its bytes,
// for the entries from first on in order, fetching up to Prefetch ahead.
// keepRaw keeps the decoded bytes with the chunk in the in-memory cache, for the routes
// that send them.
func (s *Server) each(ctx context.Context, n *nar, first int, needRaw, keepRaw bool, fn func(i int, obj, raw []byte) error) error {
	m := n.man
	if m.Chained() {
		return s.eachChained(ctx, n, first, needRaw, fn)
	}
	if m.Packed() {
		return s.eachPacked(ctx, m, first, keepRaw, fn)
	}
	// Fetches still running when this returns early are cancelled and waited for: none
	// may outlive the request (or the server's codec).
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		obj, raw []byte
		pooled   bool
		err      error
	}
	pending := make([]chan result, 0, s.prefetch)
	next := first
	start := func() {
		if next >= len(m.Entries) {
			return
		}
		i := next
		ch := make(chan result, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			obj, raw, pooled, err := s.chunk(ctx, m, i, needRaw, keepRaw)
			ch <- result{obj, raw, pooled, err}
		}()
		pending = append(pending, ch)
		next++
	}
	for range s.prefetch {
		start()
	}
	for i := first; i < len(m.Entries); i++ {
		var r result
		select {
		case r = <-pending[0]:
		case <-ctx.Done():
			return ctx.Err()
		}
		pending = pending[1:]
		if r.err != nil {
			return r.err
		}
		start()
		err := fn(i, r.obj, r.raw)
		// fn is done with the decoded bytes (pipes copy before Write returns).
		if r.pooled {
			s.release(r.raw)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// eachPacked is each for a packed manifest: the entries not in the in-memory cache are
// read with coalesced ranged requests (chunkstore.PackReader), so a NAR costs a few
// requests to the store rather than one per chunk. Their bytes are always at hand.
func (s *Server) eachPacked(ctx context.Context, m *manifest.Manifest, first int, keepRaw bool, fn func(i int, obj, raw []byte) error) error {
	var reads []chunkstore.PackRead
	var entry []int // the entry of each read
	for i := first; i < len(m.Entries); i++ {
		if _, hit := s.cachedObj(m.Entries[i]); hit {
			continue
		}
		rd, err := chunkstore.ChunkRead(m, i)
		if err != nil {
			return broken("%w", err)
		}
		reads = append(reads, rd)
		entry = append(entry, i)
	}
	next := first
	// cachedUpTo hands fn the entries before end, which were cached when planned; one
	// evicted since is fetched on its own.
	cachedUpTo := func(end int) error {
		for ; next < end; next++ {
			obj, raw, pooled, err := s.chunk(ctx, m, next, true, keepRaw)
			if err != nil {
				return err
			}
			err = fn(next, obj, raw)
			if pooled {
				s.release(raw)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	_, err := s.packs.Read(ctx, reads, func(k int, obj, raw []byte, err error) error {
		i := entry[k]
		if err := cachedUpTo(i); err != nil {
			return err
		}
		s.metrics.chunkLookup(false)
		if err != nil {
			return broken("%w", err)
		}
		// obj shares its request's buffer: a copy is cached, so the cache's bound holds.
		obj = bytes.Clone(obj)
		if keepRaw {
			s.chunks.Add(m.Entries[i].ID, &cached{obj: obj, raw: raw}, int64(len(obj)+len(raw))+64)
		} else {
			s.chunks.Add(m.Entries[i].ID, &cached{obj: obj}, int64(len(obj))+64)
		}
		next = i + 1
		return fn(i, obj, raw)
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	return cachedUpTo(len(m.Entries))
}

// eachChained is each for a manifest of a delta-primary store (version 4), whose
// entries may have no chunk object of their own: the resolver rebuilds them from their
// chains. In the zstd body such an entry is rebuiltFrame's frame, of the length
// verification measured. Frames and objects go into the in-memory caches, so sending
// a NAR right after verifying it rebuilds nothing; what is still cached is sent from
// there, the rest rebuilt in the resolver's coalesced windows.
func (s *Server) eachChained(ctx context.Context, n *nar, first int, needRaw bool, fn func(i int, obj, raw []byte) error) error {
	m := n.man
	// Frames are wanted to send the zstd body, and to measure it when verifying.
	wantFrames := n.enc == encZstd && (!needRaw || n.frames == nil)
	ready := func(i int) ([]byte, bool) {
		if needRaw {
			return nil, false
		}
		if m.Form(i) != manifest.Full {
			return s.frames.Get(m.Entries[i].ID)
		}
		c, ok := s.cachedObj(m.Entries[i])
		if !ok {
			return nil, false
		}
		return c.obj, true
	}
	// frame makes entry i's piece of the zstd body from what the resolver gave.
	frame := func(i int, obj, raw []byte) ([]byte, error) {
		e := m.Entries[i]
		if m.Form(i) != manifest.Full {
			f, ok := s.frames.Get(e.ID)
			if !ok {
				f = s.rebuiltFrame(raw)
				s.frames.Add(e.ID, f, int64(len(f))+64)
			}
			if n.frames != nil && len(f) != int(n.frames[i]) {
				return nil, broken("chunk %s: its zstd frame is %d bytes, %d when the NAR was verified", e.ID, len(f), n.frames[i])
			}
			return f, nil
		}
		if len(obj) == int(e.StoredSize) {
			s.chunks.Add(e.ID, &cached{obj: obj}, int64(len(obj))+64)
			return obj, nil
		}
		// Rebuilt from a delta, or a copy from another manifest: this manifest's
		// body has this entry's own object.
		obj, _, _, err := s.chunk(ctx, m, i, false, false)
		return obj, err
	}
	var todo []int
	for i := first; i < len(m.Entries); i++ {
		if _, ok := ready(i); !ok {
			todo = append(todo, i)
		}
	}
	next := first
	// readyUpTo hands fn the entries before end, which were cached when planned; one
	// evicted since is rebuilt on its own.
	readyUpTo := func(end int) error {
		for ; next < end; next++ {
			obj, ok := ready(next)
			if !ok {
				raw, err := s.chains.Chunk(ctx, m, next)
				if err != nil {
					return broken("%w", err)
				}
				if obj, err = frame(next, nil, raw); err != nil {
					return err
				}
			}
			if err := fn(next, obj, nil); err != nil {
				return err
			}
		}
		return nil
	}
	_, err := s.chains.Entries(ctx, m, todo, func(i int, obj, raw []byte) error {
		if err := readyUpTo(i); err != nil {
			return err
		}
		next = i + 1
		if wantFrames {
			var err error
			if obj, err = frame(i, obj, raw); err != nil {
				return err
			}
		}
		return fn(i, obj, raw)
	})
	if err == nil {
		err = readyUpTo(len(m.Entries))
	}
	if err != nil && ctx.Err() == nil {
		var se *statusError
		if !errors.As(err, &se) {
			return broken("%w", err)
		}
	}
	return err
}

// chunk returns entry i's stored object, checked: one zstd frame without a dictionary,
// as long as the manifest says (the zstd body's Content-Length is their sum), decoding
// to the bytes the entry's ID names. Objects from the in-memory cache were checked when
// they went in. A packed manifest's object is read from where the manifest says.
func (s *Server) chunk(ctx context.Context, m *manifest.Manifest, i int, needRaw, keepRaw bool) (obj, raw []byte, pooled bool, err error) {
	e := m.Entries[i]
	c, hit := s.cachedObj(e)
	s.metrics.chunkLookup(hit)
	if hit {
		if !needRaw || c.raw != nil {
			return c.obj, c.raw, false, nil
		}
		if !keepRaw {
			if raw, err = s.codec.Decode(s.buffer(), c.obj, int(e.Size)); err != nil {
				return nil, nil, false, fmt.Errorf("decoding cached chunk %s: %w", e.ID, err)
			}
			return c.obj, raw, true, nil
		}
		// The xz and uncompressed routes want the bytes: keep them with the object, so
		// a hot chunk is decoded once, not once per request.
		if raw, err = s.codec.Decode(nil, c.obj, int(e.Size)); err != nil {
			return nil, nil, false, fmt.Errorf("decoding cached chunk %s: %w", e.ID, err)
		}
		s.chunks.Add(e.ID, &cached{obj: c.obj, raw: raw}, int64(len(c.obj)+len(raw))+64)
		return c.obj, raw, false, nil
	}
	if m.Packed() {
		l := m.Locs[i]
		obj, err = s.st.ReadPackRange(ctx, m.Packs[l.Pack], l.Offset, e.StoredSize)
	} else {
		obj, err = s.st.Chunk(ctx, e.ID)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, false, ctx.Err()
		}
		return nil, nil, false, broken("%w", err)
	}
	if len(obj) != int(e.StoredSize) {
		return nil, nil, false, broken("chunk %s is %d bytes, its manifest entry says %d", e.ID, len(obj), e.StoredSize)
	}
	var h zstd.Header
	if err := h.Decode(obj); err != nil || h.DictionaryID != 0 {
		return nil, nil, false, broken("chunk %s is not a plain zstd frame (dictionary %d): %v", e.ID, h.DictionaryID, err)
	}
	// Decoded only to check the ID, the bytes go back to the pool; wanted, they stay.
	var dst []byte
	if !keepRaw {
		dst = s.buffer()
	}
	raw, err = s.codec.Open(dst, e.ID, obj, int(e.Size))
	if err != nil {
		return nil, nil, false, broken("%w", err)
	}
	if len(raw) != int(e.Size) {
		return nil, nil, false, broken("chunk %s is %d bytes, its manifest entry says %d", e.ID, len(raw), e.Size)
	}
	if keepRaw {
		s.chunks.Add(e.ID, &cached{obj: obj, raw: raw}, int64(len(obj)+len(raw))+64)
		return obj, raw, false, nil
	}
	s.chunks.Add(e.ID, &cached{obj: obj}, int64(len(obj))+64)
	return obj, raw, true, nil
}

// cached is a verified chunk in memory: its object, and its bytes once a route needed them.
type cached struct{ obj, raw []byte }

// cachedObj returns e's chunk from the cache when the object there is as long as e's.
// Two copies of a chunk in a store may be encoded differently (another keyframe level,
// say), and a zstd body is laid out by its manifest's stored sizes.
func (s *Server) cachedObj(e manifest.Entry) (*cached, bool) {
	c, ok := s.chunks.Get(e.ID)
	if !ok || len(c.obj) != int(e.StoredSize) {
		return nil, false
	}
	return c, true
}

// Handler returns the HTTP handler: /metrics, /healthz, and NAR URLs everywhere else.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = s.metrics.WriteTo(w)
	})
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("/", s.serveNAR)
	return mux
}

// healthz answers a load balancer's or CDN's health check: 200 while the store answers,
// 503 when it does not, so traffic moves to a replica that can reach it.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	w.Header().Set("Cache-Control", "no-store")
	if _, err := s.st.Meta(ctx); err != nil {
		http.Error(w, "store unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = io.WriteString(w, "ok\n")
}

// countingWriter records the status and body bytes of a response.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

func (s *Server) serveNAR(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	cw := &countingWriter{ResponseWriter: w}
	route := routeOf(r.URL.Path)
	defer func() {
		status := cw.status
		if status == 0 {
			status = http.StatusOK
		}
		s.metrics.request(route, status, cw.n, time.Since(start))
	}()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		cw.Header().Set("Allow", "GET, HEAD")
		http.Error(cw, "only GET and HEAD", http.StatusMethodNotAllowed)
		return
	}
	key := strings.TrimPrefix(r.URL.Path, "/")
	if _, err := chunkstore.NarURLKey(key); err != nil {
		s.fail(cw, r, notHere("%s: %v", key, err))
		return
	}
	release, err := s.acquire(r.Context())
	if err != nil {
		s.fail(cw, r, err)
		return
	}
	defer release()
	n, err := s.prepare(r.Context(), key)
	if err != nil {
		s.fail(cw, r, err)
		return
	}
	h := cw.Header()
	h.Set("Content-Type", n.enc.contentType)
	h.Set("Cache-Control", bodyCacheControl)
	h.Set("ETag", n.etag)
	b := newBody(r.Context(), s, n)
	defer b.Close()
	nixcache.ServeNAR(cw, r, b)
	if err := b.failure(); err != nil {
		// The status line and Content-Length are out; cutting the connection is the
		// only way left to tell the client the body is not whole.
		s.log.Error("NAR body failed while streaming", "url", key, "path", n.info.StorePath, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// acquire waits for a request slot, at most the queue timeout.
func (s *Server) acquire(ctx context.Context) (release func(), err error) {
	select {
	case s.slots <- struct{}{}:
		return func() { <-s.slots }, nil
	default:
	}
	s.queued.Add(1)
	defer s.queued.Add(-1)
	t := time.NewTimer(s.queueMax)
	defer t.Stop()
	select {
	case s.slots <- struct{}{}:
		return func() { <-s.slots }, nil
	case <-t.C:
		return nil, &statusError{http.StatusServiceUnavailable, fmt.Errorf("no request slot free within %s", s.queueMax)}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := statusOf(err)
	switch {
	case status == http.StatusNotFound:
		w.Header().Set("Cache-Control", missCacheControl)
		s.log.Debug("NAR not served", "url", r.URL.Path, "err", err)
	case r.Context().Err() != nil:
		return // the client is gone; nobody reads an answer
	default:
		w.Header().Set("Cache-Control", "no-store")
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "5")
		}
		s.log.Error("NAR not served", "url", r.URL.Path, "status", status, "err", err)
	}
	http.Error(w, http.StatusText(status)+": "+err.Error(), status)
}

// routeOf names a request's metrics route by the NAR file's extension.
func routeOf(path string) string {
	switch {
	case strings.HasSuffix(path, ".nar.zst"):
		return "nar.zst"
	case strings.HasSuffix(path, ".nar.xz"):
		return "nar.xz"
	case strings.HasSuffix(path, ".nar.bz2"):
		return "nar.bz2"
	case strings.HasSuffix(path, ".nar"):
		return "nar"
	}
	return "other"
}

// Serve answers requests on ln until ctx ends, then drains in-flight requests for up to
// drain (NAR bodies can be long; the CDN retries the rest).
func (s *Server) Serve(ctx context.Context, ln net.Listener, drain time.Duration) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("serving NARs", "listen", ln.Addr().String(), "store", s.st.String(), "trusted_keys", s.keys.Names())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return fmt.Errorf("shutting down HTTP server: %w", err)
	}
	return nil
}

// Check does for the NAR at narURL everything a request does before its first byte:
// index lookup, narinfo signature, manifest, every chunk and the NarHash. nil means the
// server would answer narURL with that NAR. `shoal store retire` deletes a NAR from
// the main cache only after this passes, so that nothing is retired that serve would
// then refuse.
func (s *Server) Check(ctx context.Context, narURL string) error {
	_, err := s.prepare(ctx, narURL)
	return err
}

// IsNotFound reports whether err from Check means the store does not hold the URL (or
// holds it under an untrusted narinfo), as opposed to holding it damaged.
func IsNotFound(err error) bool { return statusOf(err) == http.StatusNotFound }

// buffer returns an empty slice to decode a chunk into, reused across requests so the
// xz and uncompressed routes do not allocate every chunk anew.
func (s *Server) buffer() []byte {
	if b, ok := s.bufs.Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return nil
}

// release returns a buffer from buffer once nothing refers to it.
func (s *Server) release(b []byte) {
	if cap(b) == 0 || cap(b) > chunk.MaxChunkSize {
		return
	}
	b = b[:0]
	s.bufs.Put(&b)
}
