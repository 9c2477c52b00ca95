// Command keyframe-study measures how small, and how fast to encode and decode, a
// corpus's full chunk objects (keyframes, in a store that keeps later releases as
// deltas) are under each candidate encoding, in one run:
//
//	go run ./internal/cmd/keyframe-study [--all] [--sample-mb N] CORPUS
//
// CORPUS is a directory made by make-corpus (paths, cache-zstd/ or cache-xz/, and
// cache-xz/ for the xz reference). The NARs of the first path (--all: of every path)
// are cut with the default chunker, and their distinct chunks encoded one zstd frame
// each, as chunk.Codec does, at each Go encoder level, and with a dictionary trained
// from some of the chunks and judged on the others; the zstd CLI encodes a sample of
// those others one by one at -19, with and without a dictionary of its own training.
// Reference points that are not chunk objects: frames of several consecutive chunks,
// each NAR whole with `zstd -19 --long=27`, and the xz NARs of the cache (their
// FileSize).
//
// Each row gives the stored bytes, their ratio to the xz NARs and to the Go encoder's
// default level, and encode and decode throughput in MB of uncompressed bytes per
// second on one core, the fastest of several passes (decoding in this process with
// the Go decoder, the one clients use). A dictionary's own bytes are counted once in
// its row's stored bytes.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/dict"
	"github.com/klauspost/compress/zstd"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/nixcache"
)

func main() {
	var o options
	flag.BoolVar(&o.all, "all", false, "measure the distinct chunks of every path in the corpus (default: the first path only, what a delta-primary store keeps as keyframes)")
	flag.Int64Var(&o.sampleMB, "sample-mb", 0, "encode with the Go encoder only an evenly spread sample of about this many MB of chunks, and scale its bytes to all (0: every chunk)")
	flag.IntVar(&o.dictSize, "dict-size", 112640, "size of the trained dictionaries in bytes (zstd --train's default)")
	flag.Int64Var(&o.dictTrainMB, "dict-train-mb", 8, "MB of chunks, evenly spread, the dictionaries are trained from (0: no dictionary rows)")
	flag.Int64Var(&o.cliMB, "cli-sample-mb", 16, "MB of chunks, evenly spread, the zstd CLI encodes one by one at -19 (0: no CLI rows)")
	flag.IntVar(&o.group, "group", 16, "also encode every this many consecutive chunks as one frame, all chunks, at the default and best levels (0: no such rows)")
	flag.IntVar(&o.wholeLevel, "whole-level", 19, "zstd CLI level for the whole-NAR reference, with --long=27 (0: no whole-NAR row)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: keyframe-study [--all] [--sample-mb N] CORPUS")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(context.Background(), flag.Arg(0), o); err != nil {
		fmt.Fprintln(os.Stderr, "keyframe-study:", err)
		os.Exit(1)
	}
}

type options struct {
	all                          bool
	sampleMB, dictTrainMB, cliMB int64
	dictSize, wholeLevel, group  int
}

// row is one encoding's result. stored is scaled to all chunks when the encoding saw
// a sample; encode or decode left zero was not measured.
type row struct {
	name           string
	stored         int64
	raw            int64 // uncompressed bytes behind the throughputs
	encode, decode time.Duration
}

// corpus is what the study reads once: the chunks and the NARs they came from.
type corpus struct {
	nars     []*nixcache.NarInfo // from the cache the chunks were read from
	src      *nixcache.BinaryCache
	xz       []*nixcache.NarInfo // the same paths in cache-xz, nil when it lacks one
	xzCache  *nixcache.BinaryCache
	narBytes int64
	chunks   [][]byte // distinct, in the order first seen
	bytes    int64    // of chunks
}

func run(ctx context.Context, dir string, o options) error {
	c, err := load(ctx, dir, o.all)
	if err != nil {
		return err
	}
	fmt.Printf("corpus %s: %d NAR(s), %d bytes; %d distinct chunks, %d bytes (chunker %s)\n",
		filepath.Base(dir), len(c.nars), c.narBytes, len(c.chunks), c.bytes, chunk.DefaultParams().Identity())

	goSet := pick(c.chunks, spread(lengths(c.chunks), o.sampleMB<<20))
	goBytes := total(goSet)
	if goBytes < c.bytes {
		fmt.Printf("level rows measured on %d chunks, %d bytes, scaled by %.3f\n", len(goSet), goBytes, float64(c.bytes)/float64(goBytes))
	}
	var rows []row
	levels := []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault, zstd.SpeedBetterCompression, zstd.SpeedBestCompression}
	for _, l := range levels {
		r, err := measureGo(goSet, l, nil)
		if err != nil {
			return fmt.Errorf("level %s: %w", l, err)
		}
		r.stored = scaled(r.stored, goBytes, c.bytes)
		rows = append(rows, r)
	}
	base := rows[1] // the default level, what chunk.Codec writes

	// A dictionary is judged on chunks it was not trained from, as it would be on a
	// later release's: the training chunks are left out of the dictionary and CLI
	// rows, whose bytes are scaled to all chunks by the default level's bytes on the
	// same chunks.
	var train [][]byte
	held := c.chunks
	if o.dictTrainMB > 0 {
		var ti []int
		// At most half the chunks train, so that a small corpus leaves some to judge.
		ti, held = split(c.chunks, min(o.dictTrainMB<<20, c.bytes/2))
		train = pick(c.chunks, ti)
		heldSet := pick(held, spread(lengths(held), o.sampleMB<<20))
		start := time.Now()
		d, err := dict.BuildZstdDict(pieces(train, maxBlock), dict.Options{MaxDictSize: o.dictSize, HashBytes: 6, ZstdLevel: zstd.SpeedBestCompression})
		if err != nil {
			return fmt.Errorf("training a dictionary: %w", err)
		}
		fmt.Printf("dictionary: %d bytes, trained from %d chunks (%d bytes) in %s; judged on %d other chunks (%d bytes)\n",
			len(d), len(train), total(train), time.Since(start).Round(time.Millisecond), len(heldSet), total(heldSet))
		heldDefault, err := defaultBytes(heldSet)
		if err != nil {
			return err
		}
		for _, l := range []zstd.EncoderLevel{zstd.SpeedDefault, zstd.SpeedBestCompression} {
			r, err := measureGo(heldSet, l, d)
			if err != nil {
				return fmt.Errorf("level %s with a dictionary: %w", l, err)
			}
			r.stored = scaled(r.stored, heldDefault, base.stored) + int64(len(d))
			rows = append(rows, r)
		}
	}

	if o.group > 1 {
		// Not a chunk object: what frames larger than a chunk would buy.
		groups := group(c.chunks, o.group)
		for _, l := range []zstd.EncoderLevel{zstd.SpeedDefault, zstd.SpeedBestCompression} {
			r, err := measureGo(groups, l, nil)
			if err != nil {
				return fmt.Errorf("level %s over groups of %d chunks: %w", l, o.group, err)
			}
			r.name = fmt.Sprintf("Go zstd %s, one frame per %d chunks", l, o.group)
			rows = append(rows, r)
		}
	}
	if o.cliMB > 0 {
		cli, err := cliRows(ctx, held, spread(lengths(held), o.cliMB<<20), train, o.dictSize, base.stored)
		if err != nil {
			return err
		}
		rows = append(rows, cli...)
	}
	if o.wholeLevel > 0 {
		r, err := wholeNARs(ctx, c, o.wholeLevel)
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}
	xzRow, xzBytes, err := xzNARs(ctx, c)
	if err != nil {
		return err
	}
	if xzRow != nil {
		rows = append(rows, *xzRow)
	}
	printTable(rows, base.stored, xzBytes)
	return nil
}

// load reads the corpus's paths and cuts the first NAR (all: every NAR) into chunks,
// keeping each distinct chunk once.
func load(ctx context.Context, dir string, all bool) (*corpus, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "paths"))
	if err != nil {
		return nil, err
	}
	paths := strings.Fields(string(raw))
	if len(paths) == 0 {
		return nil, errors.New("the corpus lists no paths")
	}
	if !all {
		paths = paths[:1]
	}
	c := &corpus{}
	srcDir := filepath.Join(dir, "cache-zstd")
	if _, err := os.Stat(srcDir); err != nil {
		srcDir = filepath.Join(dir, "cache-xz")
	}
	if c.src, err = openCache(srcDir); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "cache-xz")); err == nil {
		if c.xzCache, err = openCache(filepath.Join(dir, "cache-xz")); err != nil {
			return nil, err
		}
	}
	seen := map[chunk.ID]bool{}
	for _, p := range paths {
		hp, err := nixcache.ParseHashPart(p)
		if err != nil {
			return nil, err
		}
		ni, err := c.src.NarInfo(ctx, hp)
		if err != nil {
			return nil, err
		}
		c.nars = append(c.nars, ni)
		c.narBytes += int64(ni.NarSize)
		if c.xzCache != nil {
			xni, err := c.xzCache.NarInfo(ctx, hp)
			if err != nil {
				slog.Warn("no xz NAR: the xz reference leaves this path out", "path", p, "err", err)
				xni = nil
			}
			c.xz = append(c.xz, xni)
		}
		if err := c.cut(ctx, ni, seen); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func openCache(dir string) (*nixcache.BinaryCache, error) {
	b, err := blob.Open(dir, nil)
	if err != nil {
		return nil, fmt.Errorf("opening cache %s: %w", dir, err)
	}
	return nixcache.NewBinaryCache(b), nil
}

// cut appends ni's chunks that seen lacks to c.chunks.
func (c *corpus) cut(ctx context.Context, ni *nixcache.NarInfo, seen map[chunk.ID]bool) error {
	rc, err := c.src.OpenNAR(ctx, ni)
	if err != nil {
		return err
	}
	defer rc.Close()
	ch, err := chunk.NewChunker(rc, chunk.DefaultParams())
	if err != nil {
		return err
	}
	for {
		b, err := ch.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("chunking %s: %w", ni.StorePath, err)
		}
		id := chunk.Sum(b)
		if seen[id] {
			continue
		}
		seen[id] = true
		c.chunks = append(c.chunks, bytes.Clone(b))
		c.bytes += int64(len(b))
	}
}

// spread returns the indexes of an evenly spread selection of n items whose sizes
// sum to at most about budget: every k-th item, for the smallest k whose selection
// stays within budget. A budget of 0, or one that all items fit, selects them all.
func spread(sizes []int, budget int64) []int {
	var sum int64
	for _, s := range sizes {
		sum += int64(s)
	}
	k := 1
	if budget > 0 {
		for ; k < len(sizes); k++ {
			var picked int64
			for i := 0; i < len(sizes); i += k {
				picked += int64(sizes[i])
			}
			if picked <= budget {
				break
			}
		}
	}
	var idx []int
	for i := 0; i < len(sizes); i += k {
		idx = append(idx, i)
	}
	return idx
}

// A throughput is the fastest of several passes over the same chunks, which leaves
// out most of what other work on the machine costs: encoding repeats until the passes
// add up to minTiming (a large corpus is encoded once), decoding, which is cheap, at
// least minDecodePasses times.
const (
	minTiming       = time.Second
	minDecodePasses = 3
)

// scaled returns n, measured on a part whose reference is partRef, scaled to the
// whole, whose reference is wholeRef.
func scaled(n, partRef, wholeRef int64) int64 {
	return int64(float64(n) * float64(wholeRef) / float64(partRef))
}

// defaultBytes returns the bytes of chunks as chunk.Codec stores them.
func defaultBytes(chunks [][]byte) (int64, error) {
	codec, err := chunk.NewCodec()
	if err != nil {
		return 0, err
	}
	defer codec.Close()
	var n int64
	var buf []byte
	for _, c := range chunks {
		buf = codec.Encode(buf[:0], c)
		n += int64(len(buf))
	}
	return n, nil
}

// maxBlock is zstd's largest block. dict.BuildZstdDict encodes each sample as one
// block and panics on a longer one (klauspost/compress v1.20.4).
const maxBlock = 128 << 10

// pieces cuts chunks into pieces of at most max bytes.
func pieces(chunks [][]byte, max int) [][]byte {
	var out [][]byte
	for _, c := range chunks {
		for len(c) > max {
			out = append(out, c[:max])
			c = c[max:]
		}
		out = append(out, c)
	}
	return out
}

// split returns the indexes of an evenly spread selection of chunks of about budget
// bytes (see spread), and the chunks it leaves.
func split(chunks [][]byte, budget int64) ([]int, [][]byte) {
	idx := spread(lengths(chunks), budget)
	rest := make([][]byte, 0, len(chunks)-len(idx))
	next := 0
	for i, c := range chunks {
		if next < len(idx) && idx[next] == i {
			next++
			continue
		}
		rest = append(rest, c)
	}
	return idx, rest
}

// group joins every n consecutive chunks into one.
func group(chunks [][]byte, n int) [][]byte {
	var out [][]byte
	for i := 0; i < len(chunks); i += n {
		out = append(out, bytes.Join(chunks[i:min(i+n, len(chunks))], nil))
	}
	return out
}

func lengths(chunks [][]byte) []int {
	out := make([]int, len(chunks))
	for i, c := range chunks {
		out[i] = len(c)
	}
	return out
}

func pick(chunks [][]byte, idx []int) [][]byte {
	out := make([][]byte, len(idx))
	for i, j := range idx {
		out[i] = chunks[j]
	}
	return out
}

func total(chunks [][]byte) int64 {
	var n int64
	for _, c := range chunks {
		n += int64(len(c))
	}
	return n
}

// measureGo encodes each chunk as its own frame, as chunk.Codec does but at level l
// and with the zstd-format dictionary d (nil: none), then decodes every frame and
// checks it. Without a dictionary it decodes with chunk.Codec itself; with one, with
// a decoder set up the same way that also knows d.
func measureGo(chunks [][]byte, l zstd.EncoderLevel, d []byte) (row, error) {
	r := row{name: "Go zstd " + l.String() + ", per chunk"}
	if len(chunks) == 0 {
		return r, errors.New("no chunks to measure")
	}
	eopts := []zstd.EOption{zstd.WithEncoderLevel(l), zstd.WithSingleSegment(true), zstd.WithZeroFrames(true), zstd.WithEncoderConcurrency(1)}
	if d != nil {
		r.name = "Go zstd " + l.String() + ", per chunk, dictionary"
		eopts = append(eopts, zstd.WithEncoderDict(d))
	}
	enc, err := zstd.NewWriter(nil, eopts...)
	if err != nil {
		return r, err
	}
	defer enc.Close()
	objs := make([][]byte, len(chunks))
	enc.EncodeAll(chunks[0], nil) // the encoder allocates its tables on first use
	var spent time.Duration
	for spent < minTiming {
		start := time.Now()
		for i, c := range chunks {
			objs[i] = enc.EncodeAll(c, objs[i][:0])
		}
		took := time.Since(start)
		spent += took
		if r.encode == 0 || took < r.encode {
			r.encode = took
		}
	}

	decode, done, err := newDecoder(d)
	if err != nil {
		return r, err
	}
	defer done()
	r.stored, r.raw, r.decode, err = decodeAll(decode, objs, chunks)
	return r, err
}

// newDecoder returns a function that decodes one chunk object as a client does:
// chunk.Codec's Decode, or, with the dictionary d, a decoder set up as chunk.Codec's
// that also knows d. done releases it.
func newDecoder(d []byte) (decode func(dst, obj []byte) ([]byte, error), done func(), err error) {
	if d == nil {
		codec, err := chunk.NewCodec()
		if err != nil {
			return nil, nil, err
		}
		return func(dst, obj []byte) ([]byte, error) { return codec.Decode(dst, obj, chunk.MaxChunkSize) }, codec.Close, nil
	}
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(chunk.MaxChunkSize),
		zstd.WithDecoderMaxWindow(chunk.MaxChunkSize),
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderDicts(d),
	)
	if err != nil {
		return nil, nil, err
	}
	return func(dst, obj []byte) ([]byte, error) { return dec.DecodeAll(obj, dst) }, dec.Close, nil
}

// decodeAll decodes each of objs, checks it against chunks, and returns the objects'
// bytes, the chunks' bytes and the time spent in decode.
func decodeAll(decode func(dst, obj []byte) ([]byte, error), objs, chunks [][]byte) (stored, raw int64, took time.Duration, err error) {
	buf := make([]byte, 0, chunk.MaxChunkSize)
	if len(objs) > 0 {
		if _, err := decode(buf[:0], objs[0]); err != nil { // the decoder allocates on first use
			return 0, 0, 0, fmt.Errorf("decoding chunk 0: %w", err)
		}
	}
	var spent time.Duration
	for passes := 0; passes < minDecodePasses || spent < minTiming; passes++ {
		var pass time.Duration
		for i, obj := range objs {
			start := time.Now()
			out, err := decode(buf[:0], obj)
			pass += time.Since(start)
			if err != nil {
				return 0, 0, 0, fmt.Errorf("decoding chunk %d: %w", i, err)
			}
			if !bytes.Equal(out, chunks[i]) {
				return 0, 0, 0, fmt.Errorf("chunk %d decodes to other bytes", i)
			}
		}
		spent += pass
		if took == 0 || pass < took {
			took = pass
		}
	}
	for i, obj := range objs {
		stored += int64(len(obj))
		raw += int64(len(chunks[i]))
	}
	return stored, raw, took, nil
}
