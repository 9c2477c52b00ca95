// Command layout-bench publishes one corpus into a store of each layout (one object per
// chunk, pack files at one or more pack sizes, and delta-primary pack stores at one or
// more chain bounds) in the same run, and prints what each costs, with ratios against
// the first:
//
//	go run ./internal/cmd/layout-bench [--pack-sizes 32MiB,...] [--delta-primary 8,...] [--keep DIR] CORPUS
//
// CORPUS is a directory made by make-corpus (paths, pk, cache-zstd/), e.g. five
// consecutive Go toolchains. For each store it reports objects per GB of NAR, the share
// of the store's bytes in objects of 128 KiB or more (what cheap storage classes bill
// at least), publish throughput, and what the daemon's fetcher (package fetch, over an
// empty local cache) pays through a real HTTP server (net/http's file server, which
// honours Range) for the corpus's last path: fetched cold, and as an upgrade after
// fetching the path before it (deltas where cheaper). Requests count every store
// request after the narinfo (manifest and objects); bytes read are the response
// bodies, against the bytes of the objects and manifest needed.
//
// With --delta-primary it also prints what the issue of delta-primary storage asks:
// store bytes against the corpus's xz cache (cache-xz/, when there), the bytes every
// upgrade fetches in turn (a client holding each previous path), the cold client's bytes
// for the last path against its zstd NAR, and `shoal serve`'s throughput rebuilding the
// last path (origin.Server over the store directory, a fresh server each time, best of
// three), every figure against the first layout's in the same run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal/analyze/dedup"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/origin"
	"github.com/shoal-nix/shoal/publish"
)

func main() {
	packSizes := flag.String("pack-sizes", "32MiB", "pack sizes to measure the packed layout at, comma-separated (MiB)")
	deltaPrimary := flag.String("delta-primary", "", "chain bounds (publish --max-chain) to measure delta-primary packed stores at, comma-separated (none by default)")
	keyframeLevel := flag.String("keyframe-level", "", "zstd level of the delta-primary stores' full chunk objects (publish --keyframe-level; default: its default)")
	overread := flag.Float64("overread", 0, "chunkstore.ReadOptions.Overread of the packed reads (0: its default)")
	minRun := flag.Int("min-reuse-run", 0, "publish.Options.MinReuseRun of the packed stores, bytes (0: its default; -1: reuse every run)")
	keep := flag.String("keep", "", "write the stores under this directory and keep them (default: a temporary directory, removed)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: layout-bench [--pack-sizes 16MiB,32MiB,64MiB] [--keep DIR] CORPUS")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	opts := options{reads: fetch.DefaultPackReads, minReuseRun: *minRun, deltaPrimary: *deltaPrimary}
	if *keyframeLevel != "" {
		lvl, err := dedup.ParseLevel(*keyframeLevel)
		if err != nil {
			fmt.Fprintln(os.Stderr, "layout-bench: --keyframe-level:", err)
			os.Exit(2)
		}
		opts.keyframeLevel = lvl
	}
	opts.reads.Overread = *overread
	if err := run(context.Background(), flag.Arg(0), *packSizes, *keep, opts); err != nil {
		fmt.Fprintln(os.Stderr, "layout-bench:", err)
		os.Exit(1)
	}
}

// options are the flags that tune the stores and the client.
type options struct {
	reads         chunkstore.ReadOptions
	minReuseRun   int
	deltaPrimary  string
	keyframeLevel zstd.EncoderLevel
}

type layout struct {
	name     string
	version  int
	packSize int
	maxChain int // > 0: delta-primary
}

type result struct {
	layout
	sum                        publish.Summary
	objects, bytes, bigBytes   int64
	cold, upgrade              fetchCost
	coldChunks, upgradeObjects int
	// Filled with --delta-primary, for every layout.
	upgrades  int64         // bytes fetched by the upgrades to each path from the one before, in turn
	coldPrice fetch.Pricing // the cold client's choice with the corpus's cache as upstream
	serveMBs  float64       // shoal serve rebuilding the last path, MB of NAR per second
}

type fetchCost struct {
	requests          int64
	bytesRead, needed int64
}

func run(ctx context.Context, corpus, packSizes, keep string, opts options) error {
	layouts := []layout{{name: "v1", version: chunkstore.FormatVersion}}
	for _, s := range strings.Split(packSizes, ",") {
		var mib int
		if _, err := fmt.Sscanf(strings.TrimSpace(s), "%dMiB", &mib); err != nil || mib <= 0 {
			return fmt.Errorf("--pack-sizes: %q is not a size in MiB such as 32MiB", s)
		}
		layouts = append(layouts, layout{name: fmt.Sprintf("v3 %dMiB", mib), version: chunkstore.FormatPacked, packSize: mib << 20})
	}
	if opts.deltaPrimary != "" {
		for _, s := range strings.Split(opts.deltaPrimary, ",") {
			k, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || k <= 0 {
				return fmt.Errorf("--delta-primary: %q is not a chain bound such as 8", s)
			}
			l := layouts[len(layouts)-1]
			l.name, l.maxChain = fmt.Sprintf("delta-primary K=%d", k), k
			layouts = append(layouts, l)
		}
	}
	pathsRaw, err := os.ReadFile(filepath.Join(corpus, "paths"))
	if err != nil {
		return err
	}
	pk, err := os.ReadFile(filepath.Join(corpus, "pk"))
	if err != nil {
		return err
	}
	var hps []string
	for _, p := range strings.Fields(string(pathsRaw)) {
		hp, err := nixcache.ParseHashPart(p)
		if err != nil {
			return err
		}
		hps = append(hps, hp)
	}
	if len(hps) < 2 {
		return errors.New("the corpus needs at least two paths: an upgrade goes from one to the next")
	}
	work := keep
	if work == "" {
		if work, err = os.MkdirTemp("", "layout-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(work)
	}
	var results []*result
	for i, l := range layouts {
		dir := filepath.Join(work, fmt.Sprintf("store-%d", i))
		r, err := measure(ctx, corpus, strings.TrimSpace(string(pk)), hps, l, dir, opts)
		if err != nil {
			return fmt.Errorf("%s: %w", l.name, err)
		}
		results = append(results, r)
	}
	var xzBytes, zstdLast int64
	if opts.deltaPrimary != "" {
		if xzBytes, err = fileSizes(filepath.Join(corpus, "cache-xz"), hps); err != nil {
			fmt.Fprintln(os.Stderr, "layout-bench: no xz cache to compare with:", err)
		}
		if zstdLast, err = fileSizes(filepath.Join(corpus, "cache-zstd"), hps[len(hps)-1:]); err != nil {
			return err
		}
	}
	printTable(results, xzBytes, zstdLast)
	return nil
}

// fileSizes adds up the FileSize of the given paths' narinfos in a file cache.
func fileSizes(dir string, hps []string) (int64, error) {
	var n int64
	for _, hp := range hps {
		raw, err := os.ReadFile(filepath.Join(dir, hp+".narinfo"))
		if err != nil {
			return 0, err
		}
		ni, err := nixcache.ParseNarInfo(raw)
		if err != nil {
			return 0, err
		}
		n += int64(ni.FileSize)
	}
	return n, nil
}

func measure(ctx context.Context, corpus, pk string, hps []string, l layout, dir string, opts options) (*result, error) {
	r := &result{layout: l}
	src, err := blob.Open(filepath.Join(corpus, "cache-zstd"), nil)
	if err != nil {
		return nil, err
	}
	dst, err := chunkstore.Open(dir, nil)
	if err != nil {
		return nil, err
	}
	kr, err := nixcache.ParseKeyring([]string{pk})
	if err != nil {
		return nil, err
	}
	p, err := publish.New(nixcache.NewBinaryCache(src), dst, kr, publish.Options{
		Params: chunk.DefaultParams(), Jobs: runtime.NumCPU(), Deltas: true,
		Layout: l.version, PackSize: l.packSize, MinReuseRun: opts.minReuseRun, Logger: slog.New(slog.DiscardHandler),
		DeltaPrimary: l.maxChain > 0, MaxChain: l.maxChain, KeyframeLevel: opts.keyframeLevel,
	})
	if err != nil {
		return nil, err
	}
	r.sum, err = p.Run(ctx, hps)
	p.Close()
	if err != nil {
		return nil, fmt.Errorf("publishing: %w", err)
	}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		r.objects++
		r.bytes += info.Size()
		if info.Size() >= 128<<10 {
			r.bigBytes += info.Size()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	// The client's side, through a real HTTP server.
	var requests, served atomic.Int64
	files := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !strings.HasSuffix(req.URL.Path, ".narinfo") {
			requests.Add(1)
		}
		files.ServeHTTP(&countingWriter{ResponseWriter: w, n: &served}, req)
	}))
	defer srv.Close()
	st, err := chunkstore.Open(srv.URL, srv.Client())
	if err != nil {
		return nil, err
	}
	last, prev := hps[len(hps)-1], hps[len(hps)-2]
	niLast, err := narInfoOf(ctx, st, last)
	if err != nil {
		return nil, err
	}
	niPrev, err := narInfoOf(ctx, st, prev)
	if err != nil {
		return nil, err
	}
	for _, upgrade := range []bool{false, true} {
		fe, counted, done, err := newFetcher(st, opts.reads)
		if err != nil {
			return nil, err
		}
		var mPrev *manifest.Manifest
		if upgrade {
			if mPrev, err = fetchNAR(fe, niPrev); err != nil {
				done()
				return nil, fmt.Errorf("fetching the path before the last: %w", err)
			}
		}
		requests.Store(0)
		served.Store(0)
		before := counted.total()
		m, err := fetchNAR(fe, niLast)
		done()
		if err != nil {
			return nil, fmt.Errorf("fetching the last path: %w", err)
		}
		c := fetchCost{requests: requests.Load(), bytesRead: served.Load(), needed: counted.total() - before}
		if upgrade {
			r.upgrade, r.upgradeObjects = c, missing(m, mPrev)
		} else {
			r.cold, r.coldChunks = c, missing(m, nil)
		}
	}
	if opts.deltaPrimary == "" {
		return r, nil
	}
	if r.upgrades, err = upgradeBytes(ctx, st, hps, opts, &served); err != nil {
		return nil, err
	}
	if r.coldPrice, err = coldChoice(ctx, st, corpus, pk, niLast, opts); err != nil {
		return nil, err
	}
	if r.serveMBs, err = serveThroughput(ctx, dir, pk, niLast); err != nil {
		return nil, err
	}
	return r, nil
}

// upgradeBytes fetches every path in turn into one local cache and counts the bytes the
// store sent for each but the first: what a client upgrading release by release pays.
func upgradeBytes(ctx context.Context, st *chunkstore.Store, hps []string, opts options, served *atomic.Int64) (int64, error) {
	fe, _, done, err := newFetcher(st, opts.reads)
	if err != nil {
		return 0, err
	}
	defer done()
	var total int64
	for i, hp := range hps {
		ni, err := narInfoOf(ctx, st, hp)
		if err != nil {
			return 0, err
		}
		served.Store(0)
		if _, err := fetchNAR(fe, ni); err != nil {
			return 0, fmt.Errorf("upgrading to %s: %w", ni.StorePath, err)
		}
		if i > 0 {
			total += served.Load()
		}
	}
	return total, nil
}

// coldChoice is what the daemon's fetcher decides for a cold client of ni when the
// corpus's cache (xz when there, else zstd) is its upstream for whole NARs.
func coldChoice(ctx context.Context, st *chunkstore.Store, corpus, pk string, ni *nixcache.NarInfo, opts options) (fetch.Pricing, error) {
	dir := filepath.Join(corpus, "cache-xz")
	if _, err := os.Stat(dir); err != nil {
		dir = filepath.Join(corpus, "cache-zstd")
	}
	b, err := blob.Open(dir, nil)
	if err != nil {
		return fetch.Pricing{}, err
	}
	kr, err := nixcache.ParseKeyring([]string{pk})
	if err != nil {
		return fetch.Pricing{}, err
	}
	fe, counted, done, err := newFetcher(st, opts.reads)
	if err != nil {
		return fetch.Pricing{}, err
	}
	defer done()
	fe.Upstream = fetch.Upstream{Caches: []*nixcache.BinaryCache{nixcache.NewBinaryCache(b)}, Keys: kr}
	if _, err := fetchNAR(fe, ni); err != nil {
		return fetch.Pricing{}, fmt.Errorf("fetching %s cold with an upstream: %w", ni.StorePath, err)
	}
	counted.mu.Lock()
	defer counted.mu.Unlock()
	return counted.priced, nil
}

// serveThroughput is shoal serve's rate rebuilding ni's NAR from the store in dir: MB of
// NAR per second of a whole GET through a fresh server (nothing in its memory), the
// best of three.
func serveThroughput(ctx context.Context, dir, pk string, ni *nixcache.NarInfo) (float64, error) {
	kr, err := nixcache.ParseKeyring([]string{pk})
	if err != nil {
		return 0, err
	}
	best := 0.0
	for range 3 {
		st, err := chunkstore.Open(dir, nil)
		if err != nil {
			return 0, err
		}
		s, err := origin.New(st, origin.Options{Keys: kr})
		if err != nil {
			return 0, err
		}
		hs := httptest.NewServer(s.Handler())
		start := time.Now()
		resp, err := hs.Client().Get(hs.URL + "/" + ni.URL)
		var n int64
		if err == nil {
			n, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("GET %s: %s", ni.URL, resp.Status)
			}
		}
		took := time.Since(start)
		hs.Close()
		s.Close()
		if err != nil {
			return 0, fmt.Errorf("serving %s: %w", ni.StorePath, err)
		}
		if n == 0 {
			return 0, fmt.Errorf("serving %s: empty body", ni.StorePath)
		}
		best = max(best, float64(ni.NarSize)/1e6/took.Seconds())
	}
	return best, nil
}

func narInfoOf(ctx context.Context, st *chunkstore.Store, hp string) (*nixcache.NarInfo, error) {
	raw, err := st.NarInfo(ctx, hp)
	if err != nil {
		return nil, err
	}
	return nixcache.ParseNarInfo(raw)
}

// newFetcher returns the daemon's fetcher over an empty local cache in a temporary
// directory, with st as its only source, and the function that removes it all.
func newFetcher(st *chunkstore.Store, reads chunkstore.ReadOptions) (*fetch.Fetcher, *byteCounter, func(), error) {
	dir, err := os.MkdirTemp("", "layout-bench-cache-")
	if err != nil {
		return nil, nil, nil, err
	}
	cache, err := localcache.Open(filepath.Join(dir, "cache.db"), localcache.Options{})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, nil, err
	}
	codec, err := chunk.NewCodec()
	if err != nil {
		cache.Close()
		os.RemoveAll(dir)
		return nil, nil, nil, err
	}
	src := &fetch.StoreSource{Store: st, Reads: reads}
	c := &byteCounter{bytes: map[string]int64{}}
	fe := &fetch.Fetcher{Cache: cache, Codec: codec, Sources: []fetch.Source{src}, Params: chunk.DefaultParams(), Counters: c}
	return fe, c, func() {
		fe.Close()
		src.Close()
		codec.Close()
		cache.Close()
		os.RemoveAll(dir)
	}, nil
}

// fetchNAR has fe make the NAR available, as the daemon does for a Nix request.
func fetchNAR(fe *fetch.Fetcher, ni *nixcache.NarInfo) (*manifest.Manifest, error) {
	p, err := fe.Start(fetch.Request{Info: ni, KnownPackage: true})
	if err != nil {
		return nil, err
	}
	defer p.Release()
	return p.Wait(context.Background())
}

// byteCounter receives the fetcher's byte counts by source: the objects (chunks,
// deltas) and manifests it needed, and the gaps it read through.
type byteCounter struct {
	mu     sync.Mutex
	bytes  map[string]int64
	priced fetch.Pricing // the last NAR's
}

func (c *byteCounter) Add(source string, n int64) {
	c.mu.Lock()
	c.bytes[source] += n
	c.mu.Unlock()
}
func (c *byteCounter) Event(string) {}
func (c *byteCounter) Priced(p fetch.Pricing) {
	c.mu.Lock()
	c.priced = p
	c.mu.Unlock()
}

// total is what the fetcher needed: every object and manifest, not the gaps read
// through between them.
func (c *byteCounter) total() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for k, v := range c.bytes {
		if !strings.HasSuffix(k, fetch.OverreadSuffix) {
			n += v
		}
	}
	return n
}

// missing counts m's distinct chunks that have's manifest (nil: none) lacks: the
// objects a client holding have fetches.
func missing(m, have *manifest.Manifest) int {
	seen := map[chunk.ID]bool{}
	if have != nil {
		for _, e := range have.Entries {
			seen[e.ID] = true
		}
	}
	n := 0
	for _, e := range m.Entries {
		if !seen[e.ID] {
			seen[e.ID] = true
			n++
		}
	}
	return n
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func printTable(results []*result, xzBytes, zstdLast int64) {
	base := results[0]
	row := func(name string, f func(r *result) float64, format string) {
		fmt.Printf("%-44s", name)
		for _, r := range results {
			v := f(r)
			cell := fmt.Sprintf(format, v)
			if r != base {
				if b := f(base); b != 0 {
					cell += fmt.Sprintf(" (%.3fx)", v/b)
				}
			}
			fmt.Printf(" %24s", cell)
		}
		fmt.Println()
	}
	fmt.Printf("%-44s", "")
	for _, r := range results {
		fmt.Printf(" %24s", r.name)
	}
	fmt.Println()
	gb := func(r *result) float64 { return float64(r.sum.NarBytes) / 1e9 }
	row("NAR bytes published", func(r *result) float64 { return float64(r.sum.NarBytes) }, "%.0f")
	row("store objects", func(r *result) float64 { return float64(r.objects) }, "%.0f")
	row("store objects per GB of NAR", func(r *result) float64 { return float64(r.objects) / gb(r) }, "%.1f")
	row("store bytes", func(r *result) float64 { return float64(r.bytes) }, "%.0f")
	row("share of bytes in objects >= 128 KiB", func(r *result) float64 { return float64(r.bigBytes) / float64(r.bytes) }, "%.4f")
	row("publish MB/s (NAR)", func(r *result) float64 { return float64(r.sum.NarBytes) / 1e6 / r.sum.Elapsed.Seconds() }, "%.1f")
	row("cold NAR: chunks fetched", func(r *result) float64 { return float64(r.coldChunks) }, "%.0f")
	row("cold NAR: store requests", func(r *result) float64 { return float64(r.cold.requests) }, "%.0f")
	row("cold NAR: requests per chunk", func(r *result) float64 { return float64(r.cold.requests) / float64(r.coldChunks) }, "%.4f")
	row("cold NAR: bytes read / bytes needed", func(r *result) float64 { return float64(r.cold.bytesRead) / float64(r.cold.needed) }, "%.4f")
	row("cold NAR: bytes read", func(r *result) float64 { return float64(r.cold.bytesRead) }, "%.0f")
	row("upgrade: objects fetched", func(r *result) float64 { return float64(r.upgradeObjects) }, "%.0f")
	row("upgrade: store requests", func(r *result) float64 { return float64(r.upgrade.requests) }, "%.0f")
	row("upgrade: bytes read / bytes needed", func(r *result) float64 { return float64(r.upgrade.bytesRead) / float64(r.upgrade.needed) }, "%.4f")
	row("upgrade: bytes read", func(r *result) float64 { return float64(r.upgrade.bytesRead) }, "%.0f")
	if results[len(results)-1].maxChain > 0 {
		if xzBytes > 0 {
			row("store bytes / xz cache", func(r *result) float64 { return float64(r.bytes) / float64(xzBytes) }, "%.3f")
		}
		row("upgrades in turn: bytes read", func(r *result) float64 { return float64(r.upgrades) }, "%.0f")
		row("cold NAR: bytes read / zstd NAR", func(r *result) float64 { return float64(r.cold.bytesRead) / float64(zstdLast) }, "%.3f")
		row("cold NAR, upstream there: taken whole (1) or not (0)", func(r *result) float64 { return b2f(r.coldPrice.Whole) }, "%.0f")
		row("cold NAR, upstream there: chunks priced / whole", func(r *result) float64 {
			return float64(r.coldPrice.DownloadBytes) / float64(r.coldPrice.WholeBytes)
		}, "%.3f")
		row("shoal serve, last NAR: MB/s", func(r *result) float64 { return r.serveMBs }, "%.1f")
		fmt.Printf("xz cache: %d bytes for the %d paths; zstd NAR of the last: %d bytes\n", xzBytes, results[0].sum.NARs+results[0].sum.Skipped, zstdLast)
	}
	fmt.Println()
	for _, r := range results {
		fmt.Printf("%s: published %d NARs in %s, %d new chunks, %d deltas, %d packs, %d chunks written again (%d bytes)\n",
			r.name, r.sum.NARs, r.sum.Elapsed.Round(time.Millisecond), r.sum.NewChunks, r.sum.Deltas, r.sum.Packs, r.sum.Rewritten, r.sum.RewrittenBytes)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
