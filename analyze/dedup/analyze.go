// Package analyze measures how well a series of NARs would deduplicate under
// different chunking and compression settings, without storing any chunk: it
// answers a cache operator's question (which chunk sizes, cut strategy and zstd
// level make a chunk store smallest, and what does each upgrade cost?) with
// numbers from the operator's own NARs.
//
// Each NAR is read once and fed to every configuration at the same time; only
// chunk IDs and sizes are kept in memory, so a sweep over gigabytes of NARs
// needs memory proportional to the number of distinct chunks, not their bytes.
package dedup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal/chunk"
	"golang.org/x/sync/errgroup"
)

// Strategy says where chunks may be cut.
type Strategy string

const (
	// WholeNAR chunks the NAR as one stream, as shoal's format does.
	WholeNAR Strategy = "nar"
	// FileBoundaries additionally cuts right after every regular file's
	// contents, so no chunk spans two files (see splitNAR). Chunks can then be
	// shorter than Min, which shoal's manifest version 1 does not allow: this
	// strategy is measured to decide whether a new format would pay off.
	FileBoundaries Strategy = "files"
)

// ParseStrategy accepts "nar" or "files".
func ParseStrategy(s string) (Strategy, error) {
	switch Strategy(s) {
	case WholeNAR, FileBoundaries:
		return Strategy(s), nil
	}
	return "", fmt.Errorf("unknown strategy %q (want %q or %q)", s, WholeNAR, FileBoundaries)
}

// Config is one point of a sweep: how chunks are cut.
type Config struct {
	Strategy Strategy
	Params   chunk.Params
}

func (c Config) String() string {
	return fmt.Sprintf("%s %s/%s/%s", c.Strategy, FormatSize(c.Params.Min), FormatSize(c.Params.Avg), FormatSize(c.Params.Max))
}

// identityLen is the length of the chunker identity a manifest of this
// configuration would record. File-boundary cutting has no identity in the
// format yet; it is counted as the FastCDC identity plus a "-files" suffix.
func (c Config) identityLen() int {
	n := len(c.Params.Identity())
	if c.Strategy == FileBoundaries {
		n += len("-files")
	}
	return n
}

// ParseParams parses "MIN/AVG/MAX" with sizes as accepted by ParseSize, e.g.
// "16k/64k/256k", and checks that the chunker can run them.
func ParseParams(s string) (chunk.Params, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 {
		return chunk.Params{}, fmt.Errorf("chunk sizes %q: want MIN/AVG/MAX, e.g. 16k/64k/256k", s)
	}
	var v [3]int
	for i, p := range parts {
		n, err := ParseSize(p)
		if err != nil {
			return chunk.Params{}, fmt.Errorf("chunk sizes %q: %w", s, err)
		}
		v[i] = n
	}
	p := chunk.Params{Min: v[0], Avg: v[1], Max: v[2]}
	if err := p.Validate(); err != nil {
		return chunk.Params{}, fmt.Errorf("chunk sizes %q: %w", s, err)
	}
	return p, nil
}

// ParseSize parses a byte count: a decimal integer optionally followed by k
// or m (binary multiples, case-insensitive, an optional "iB" or "B" after it).
func ParseSize(s string) (int, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "b"), "i")
	mult := 1
	switch {
	case strings.HasSuffix(t, "k"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "m"):
		mult, t = 1<<20, t[:len(t)-1]
	}
	n, err := strconv.Atoi(t)
	if err != nil || n <= 0 || n > (1<<30)/mult {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with k or m", s)
	}
	return n * mult, nil
}

// FormatSize prints a byte count the way ParseSize reads it, in the largest
// unit that divides it.
func FormatSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + "m"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "k"
	}
	return strconv.Itoa(n)
}

// ParseLevel accepts klauspost/compress's level names: fastest, default,
// better, best.
func ParseLevel(s string) (zstd.EncoderLevel, error) {
	ok, l := zstd.EncoderLevelFromString(s)
	if !ok || l.String() != strings.ToLower(s) {
		return 0, fmt.Errorf("unknown zstd level %q (want fastest, default, better or best)", s)
	}
	return l, nil
}

// Source is one NAR to analyze.
type Source struct {
	// Name identifies the NAR in reports, e.g. its store path.
	Name string
	// NarSize is the NAR's length if known in advance (for progress), else 0.
	NarSize uint64
	// FileSize is the size of the compressed NAR in the source cache, or 0 if
	// there is none (a local store path).
	FileSize uint64
	// Open returns the uncompressed NAR. Its reader should fail rather than end
	// cleanly if the bytes are not the NAR they claim to be.
	Open func(ctx context.Context) (io.ReadCloser, error)
}

// Options controls a Run.
type Options struct {
	Configs []Config
	// Levels are the zstd levels every unique chunk is compressed at.
	Levels []zstd.EncoderLevel
	// Jobs bounds how many NARs are read at once; each NAR is fed to every
	// configuration concurrently. Zero means GOMAXPROCS.
	Jobs int
	// Progress, if set, is called with the number of NAR bytes just read.
	// It is called from several goroutines.
	Progress func(n int64)
	// Step, if set, is called as each NAR is read (phase "reading") and as each
	// upgrade's deltas are measured (phase "deltas"), with how many of the phase's
	// total are done. It is called from several goroutines.
	Step func(phase string, done, total int)

	// Deltas also prices each NAR as deltas against the previous version of its
	// package (see DeltaCost). It reads those NARs a second time.
	Deltas bool
	// DeltaBases and DeltaLevel are publish's --delta-bases and --delta-level;
	// zero means publish's defaults.
	DeltaBases int
	DeltaLevel zstd.EncoderLevel
	// TempDir holds the NARs read for deltas; "" means the system's.
	TempDir string
}

// Result holds the measurements of a Run.
type Result struct {
	NARs    []NAR
	Levels  []zstd.EncoderLevel
	Configs []ConfigResult
}

// NAR describes one input as the analysis saw it.
type NAR struct {
	Name     string
	NarSize  uint64 // bytes read
	FileSize uint64 // compressed size in the source cache, 0 if unknown
}

// ConfigResult is what one configuration would store.
type ConfigResult struct {
	Config
	Chunks       uint64 // chunk references over all NARs
	UniqueChunks uint64
	UniqueBytes  uint64   // uncompressed bytes of the distinct chunks
	Stored       []uint64 // per level: zstd frames of the distinct chunks
	Manifests    []uint64 // per level: encoded manifests of all NARs
	Sizes        []uint32 // sizes of the distinct chunks, ascending
	PerNAR       []NARCost
	// Deltas, parallel to PerNAR, is nil unless Options.Deltas was set.
	Deltas []DeltaCost
}

// NARCost is what one NAR adds to everything analyzed before it: the bytes a
// client holding all previous NARs' chunks would fetch to upgrade to it.
type NARCost struct {
	Chunks    uint64
	NewChunks uint64
	NewBytes  uint64   // uncompressed
	NewStored []uint64 // per level
	Manifest  []uint64 // per level: this NAR's manifest
}

// Upgrade is the bytes NAR i costs at level index l: its new chunks' frames
// plus its manifest.
func (c *ConfigResult) Upgrade(i, l int) uint64 {
	return c.PerNAR[i].NewStored[l] + c.PerNAR[i].Manifest[l]
}

// Total is what the configuration stores at level index l: distinct chunks'
// frames plus every manifest.
func (c *ConfigResult) Total(l int) uint64 { return c.Stored[l] + c.Manifests[l] }

// chunkInfo is what a configuration remembers of a distinct chunk.
type chunkInfo struct {
	size   uint32
	stored []uint32 // per level
}

// configState accumulates one configuration's distinct chunks across NARs
// read concurrently. Whoever sees a chunk first compresses it; the ordered
// accounting happens after every NAR is read.
type configState struct {
	cfg  Config
	mu   sync.Mutex
	seen map[chunk.ID]*chunkInfo
	refs [][]chunk.ID // per NAR, in NAR order
}

// Run reads every source once and measures each configuration on it. The
// order of sources matters for the per-NAR costs: each NAR is charged for the
// chunks no earlier NAR had.
func Run(ctx context.Context, sources []Source, opts Options) (*Result, error) {
	if len(opts.Configs) == 0 {
		return nil, errors.New("analyze: no configuration to measure")
	}
	if len(opts.Levels) == 0 {
		return nil, errors.New("analyze: no zstd level to measure")
	}
	for _, c := range opts.Configs {
		if err := c.Params.Validate(); err != nil {
			return nil, fmt.Errorf("analyze: configuration %s: %w", c, err)
		}
		if _, err := ParseStrategy(string(c.Strategy)); err != nil {
			return nil, fmt.Errorf("analyze: %w", err)
		}
	}
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = runtime.GOMAXPROCS(0)
	}
	enc, err := newEncoders(opts.Levels)
	if err != nil {
		return nil, err
	}
	defer enc.close()

	states := make([]*configState, len(opts.Configs))
	for i, c := range opts.Configs {
		states[i] = &configState{cfg: c, seen: map[chunk.ID]*chunkInfo{}, refs: make([][]chunk.ID, len(sources))}
	}
	nars := make([]NAR, len(sources))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	var read atomic.Int64
	for i, src := range sources {
		nars[i] = NAR{Name: src.Name, FileSize: src.FileSize}
		g.Go(func() error {
			n, err := readNAR(gctx, src, i, states, enc, opts.Progress)
			if err != nil {
				return fmt.Errorf("analyzing %s: %w", src.Name, err)
			}
			nars[i].NarSize = n
			opts.step("reading", int(read.Add(1)), len(sources))
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	res := &Result{NARs: nars, Levels: opts.Levels}
	for _, s := range states {
		res.Configs = append(res.Configs, s.account(nars, len(opts.Levels)))
	}
	if opts.Deltas {
		opts.Jobs = jobs
		if err := measureDeltas(ctx, sources, states, res, opts); err != nil {
			return nil, err
		}
	}
	return res, nil
}

func (o Options) step(phase string, done, total int) {
	if o.Step != nil {
		o.Step(phase, done, total)
	}
}

// readNAR reads one source and feeds its bytes to a consumer per
// configuration. Blocks are shared read-only between consumers, and the
// channels are short, so memory stays at a few blocks per configuration.
func readNAR(ctx context.Context, src Source, idx int, states []*configState, enc *encoders, progress func(int64)) (uint64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rc, err := src.Open(ctx)
	if err != nil {
		return 0, fmt.Errorf("opening NAR: %w", err)
	}
	defer rc.Close()

	g, gctx := errgroup.WithContext(ctx)
	feeds := make([]chan []byte, len(states))
	for i, st := range states {
		feeds[i] = make(chan []byte, 4)
		g.Go(func() error {
			r := &chanReader{ctx: gctx, ch: feeds[i]}
			refs, err := st.consume(r, enc)
			if err != nil {
				return fmt.Errorf("%s: %w", st.cfg, err)
			}
			if !r.eof {
				return fmt.Errorf("%s: stopped before the end of the NAR", st.cfg)
			}
			st.mu.Lock()
			st.refs[idx] = refs
			st.mu.Unlock()
			return nil
		})
	}
	var total uint64
	g.Go(func() error {
		defer func() {
			for _, f := range feeds {
				close(f)
			}
		}()
		for {
			buf := make([]byte, 1<<20)
			n, err := io.ReadFull(rc, buf)
			if n > 0 {
				total += uint64(n)
				if progress != nil {
					progress(int64(n))
				}
				for _, f := range feeds {
					select {
					case f <- buf[:n]:
					case <-gctx.Done():
						return gctx.Err()
					}
				}
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("reading NAR: %w", err)
			}
		}
	})
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return total, nil
}

// chanReader reads the blocks of a channel as one stream.
type chanReader struct {
	ctx context.Context
	ch  <-chan []byte
	buf []byte
	eof bool
}

func (r *chanReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.eof {
			return 0, io.EOF
		}
		select {
		case b, ok := <-r.ch:
			if !ok {
				r.eof = true
				return 0, io.EOF
			}
			r.buf = b
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// consume chunks one NAR and returns its chunk IDs in order, registering the
// chunks this configuration has not seen yet.
func (s *configState) consume(r io.Reader, enc *encoders) ([]chunk.ID, error) {
	var refs []chunk.ID
	var dst []byte
	chunker, err := chunk.NewChunker(r, s.cfg.Params)
	if err != nil {
		return nil, err
	}
	cut := func(seg io.Reader) error {
		chunker.Reset(seg)
		for {
			data, err := chunker.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			id := chunk.Sum(data)
			refs = append(refs, id)
			s.mu.Lock()
			_, ok := s.seen[id]
			if !ok {
				// Claim the chunk before compressing it, so concurrent NARs
				// compress each chunk once.
				info := &chunkInfo{size: uint32(len(data)), stored: make([]uint32, len(enc.levels))}
				s.seen[id] = info
				s.mu.Unlock()
				var sizes [4]uint32
				for l := range enc.levels {
					dst = enc.levels[l].EncodeAll(data, dst[:0])
					sizes[l] = uint32(len(dst))
				}
				s.mu.Lock()
				copy(info.stored, sizes[:])
			}
			s.mu.Unlock()
		}
	}
	switch s.cfg.Strategy {
	case FileBoundaries:
		err = splitNAR(r, cut)
	default:
		err = cut(r)
	}
	return refs, err
}

// account walks the NARs in order and charges each one for the chunks no
// earlier NAR had.
func (s *configState) account(nars []NAR, levels int) ConfigResult {
	res := ConfigResult{Config: s.cfg, Stored: make([]uint64, levels), Manifests: make([]uint64, levels)}
	had := make(map[chunk.ID]struct{}, len(s.seen))
	for i, refs := range s.refs {
		c := NARCost{Chunks: uint64(len(refs)), NewStored: make([]uint64, levels), Manifest: make([]uint64, levels)}
		for l := range levels {
			c.Manifest[l] = manifestHeaderLen(nars[i].NarSize, s.cfg.identityLen(), len(refs))
		}
		for _, id := range refs {
			info := s.seen[id]
			for l := range levels {
				c.Manifest[l] += manifestEntryLen(info.size, info.stored[l])
			}
			if _, ok := had[id]; ok {
				continue
			}
			had[id] = struct{}{}
			c.NewChunks++
			c.NewBytes += uint64(info.size)
			for l := range levels {
				c.NewStored[l] += uint64(info.stored[l])
			}
			res.Sizes = append(res.Sizes, info.size)
		}
		res.Chunks += c.Chunks
		res.UniqueChunks += c.NewChunks
		res.UniqueBytes += c.NewBytes
		for l := range levels {
			res.Stored[l] += c.NewStored[l]
			res.Manifests[l] += c.Manifest[l]
		}
		res.PerNAR = append(res.PerNAR, c)
	}
	slices.Sort(res.Sizes)
	return res
}

// manifestHeaderLen is the size of a version 1 manifest without its entries:
// magic, version, NarHash, NarSize, chunker identity, entry count, checksum
// (docs/format.md).
func manifestHeaderLen(narSize uint64, identityLen, entries int) uint64 {
	return uint64(8 + 1 + 32 + uvarintLen(narSize) + uvarintLen(uint64(identityLen)) + identityLen + uvarintLen(uint64(entries)) + 32)
}

// manifestEntryLen is the size of one manifest entry: ID, Size, StoredSize.
func manifestEntryLen(size, stored uint32) uint64 {
	return uint64(len(chunk.ID{}) + uvarintLen(uint64(size)) + uvarintLen(uint64(stored)))
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// encoders holds one shared zstd encoder per level. EncodeAll is safe for
// concurrent use; each encoder keeps GOMAXPROCS internal states.
type encoders struct {
	levels []*zstd.Encoder
}

// newEncoders configures each level like chunk.Codec does (single-segment
// frames with content size and checksum), so sizes match real chunk objects.
func newEncoders(levels []zstd.EncoderLevel) (*encoders, error) {
	if len(levels) > 4 {
		return nil, fmt.Errorf("analyze: %d zstd levels, at most 4", len(levels))
	}
	e := &encoders{}
	for _, l := range levels {
		w, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(l), zstd.WithSingleSegment(true), zstd.WithZeroFrames(true),
			zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
		if err != nil {
			e.close()
			return nil, fmt.Errorf("analyze: creating zstd encoder at level %s: %w", l, err)
		}
		e.levels = append(e.levels, w)
	}
	return e, nil
}

func (e *encoders) close() {
	for _, w := range e.levels {
		w.Close()
	}
}
