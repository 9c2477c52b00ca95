// Command layout-bench publishes one corpus into a store of each layout (one object per
// chunk, and pack files at one or more pack sizes) in the same run, and prints what each
// costs, with ratios against the first:
//
//	go run ./internal/cmd/layout-bench [--pack-sizes 32MiB,...] [--keep DIR] CORPUS
//
// CORPUS is a directory made by make-corpus (paths, pk, cache-zstd/), e.g. five
// consecutive Go toolchains. For each store it reports objects per GB of NAR, the share
// of the store's bytes in objects of 128 KiB or more (what cheap storage classes bill
// at least), publish throughput, and what a client pays through a real HTTP server
// (net/http's file server, which honours Range) for the corpus's last path: fetched
// cold, and as an upgrade from the path before it with that path's chunks cached
// (deltas where cheaper, as the daemon prices them). Requests count every store request
// after the narinfo (manifest and objects); bytes read are the response bodies,
// against the bytes of the objects needed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

func main() {
	packSizes := flag.String("pack-sizes", "32MiB", "pack sizes to measure the packed layout at, comma-separated (MiB)")
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
	readOpts = chunkstore.ReadOptions{Overread: *overread}
	minReuseRun = *minRun
	if err := run(context.Background(), flag.Arg(0), *packSizes, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "layout-bench:", err)
		os.Exit(1)
	}
}

// readOpts and minReuseRun come from the flags.
var (
	readOpts    chunkstore.ReadOptions
	minReuseRun int
)

type layout struct {
	name     string
	version  int
	packSize int
}

type result struct {
	layout
	sum                        publish.Summary
	objects, bytes, bigBytes   int64
	cold, upgrade              fetchCost
	coldChunks, upgradeObjects int
}

type fetchCost struct {
	requests          int64
	bytesRead, needed int64
}

func run(ctx context.Context, corpus, packSizes, keep string) error {
	layouts := []layout{{name: "v1", version: chunkstore.FormatVersion}}
	for _, s := range strings.Split(packSizes, ",") {
		var mib int
		if _, err := fmt.Sscanf(strings.TrimSpace(s), "%dMiB", &mib); err != nil || mib <= 0 {
			return fmt.Errorf("--pack-sizes: %q is not a size in MiB such as 32MiB", s)
		}
		layouts = append(layouts, layout{name: fmt.Sprintf("v3 %dMiB", mib), version: chunkstore.FormatPacked, packSize: mib << 20})
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
		r, err := measure(ctx, corpus, strings.TrimSpace(string(pk)), hps, l, dir)
		if err != nil {
			return fmt.Errorf("%s: %w", l.name, err)
		}
		results = append(results, r)
	}
	printTable(results)
	return nil
}

func measure(ctx context.Context, corpus, pk string, hps []string, l layout, dir string) (*result, error) {
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
		Layout: l.version, PackSize: l.packSize, MinReuseRun: minReuseRun, Logger: slog.New(slog.DiscardHandler),
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
	mPrev, err := manifestOf(ctx, st, prev)
	if err != nil {
		return nil, err
	}
	cache := map[chunk.ID][]byte{}
	codec, err := chunk.NewCodec()
	if err != nil {
		return nil, err
	}
	defer codec.Close()
	for i, e := range mPrev.Entries {
		if _, ok := cache[e.ID]; ok {
			continue
		}
		obj, err := objectOf(ctx, st, mPrev, i)
		if err != nil {
			return nil, err
		}
		if cache[e.ID], err = codec.Open(nil, e.ID, obj, int(e.Size)); err != nil {
			return nil, err
		}
	}

	for _, upgrade := range []bool{false, true} {
		requests.Store(0)
		served.Store(0)
		m, err := manifestOf(ctx, st, last)
		if err != nil {
			return nil, err
		}
		have := map[chunk.ID][]byte{}
		if upgrade {
			have = cache
		}
		needed, n, err := fetch(ctx, st, codec, m, have)
		if err != nil {
			return nil, err
		}
		c := fetchCost{requests: requests.Load(), bytesRead: served.Load(), needed: needed}
		// The manifest is read either way; count its bytes as needed too.
		raw, _ := blob.ReadAll(ctx, must(blob.Open(dir, nil)), chunkstore.ManifestKey(manifest.Key(m.NarHash)), 1<<30)
		c.needed += int64(len(raw))
		if upgrade {
			r.upgrade, r.upgradeObjects = c, n
		} else {
			r.cold, r.coldChunks = c, n
		}
	}
	return r, nil
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func manifestOf(ctx context.Context, st *chunkstore.Store, hp string) (*manifest.Manifest, error) {
	raw, err := st.NarInfo(ctx, hp)
	if err != nil {
		return nil, err
	}
	ni, err := nixcache.ParseNarInfo(raw)
	if err != nil {
		return nil, err
	}
	m, _, err := st.Manifest(ctx, ni.NarHash)
	return m, err
}

// objectOf reads entry i's chunk object, wherever the layout keeps it (setup only).
func objectOf(ctx context.Context, st *chunkstore.Store, m *manifest.Manifest, i int) ([]byte, error) {
	if m.Packed() {
		l := m.Locs[i]
		return st.ReadPackRange(ctx, m.Packs[l.Pack], l.Offset, m.Entries[i].StoredSize)
	}
	return st.Chunk(ctx, m.Entries[i].ID)
}

// fetch gets every chunk of m the client lacks, as the daemon would: a delta when its
// base chunks are cached and it is cheaper, else the chunk object. A loose store costs a
// request per object; a packed one goes through chunkstore.PackReader. It returns the bytes
// of the objects needed and how many there were.
func fetch(ctx context.Context, st *chunkstore.Store, codec *chunk.Codec, m *manifest.Manifest, have map[chunk.ID][]byte) (needed int64, objects int, err error) {
	seen := map[chunk.ID]bool{}
	var reads []chunkstore.PackRead
	for i, e := range m.Entries {
		if _, ok := have[e.ID]; ok || seen[e.ID] {
			continue
		}
		seen[e.ID] = true
		objects++
		bases, did, size, hasDelta := m.DeltaOf(i)
		useDelta := hasDelta && size < e.StoredSize
		for _, b := range bases {
			if _, ok := have[b.ID]; !ok {
				useDelta = false
			}
		}
		if useDelta {
			needed += int64(size)
		} else {
			needed += int64(e.StoredSize)
		}
		if !m.Packed() {
			if useDelta {
				_, err = st.Delta(ctx, did)
			} else {
				_, err = st.Chunk(ctx, e.ID)
			}
			if err != nil {
				return 0, 0, err
			}
			continue
		}
		if useDelta {
			rd, _ := chunkstore.DeltaRead(m, i, func() ([]byte, error) {
				var dict []byte
				for _, b := range bases {
					dict = append(dict, have[b.ID]...)
				}
				return dict, nil
			})
			reads = append(reads, rd)
			continue
		}
		rd, err := chunkstore.ChunkRead(m, i)
		if err != nil {
			return 0, 0, err
		}
		reads = append(reads, rd)
	}
	if len(reads) > 0 {
		pr, err := chunkstore.NewPackReader(st, readOpts)
		if err != nil {
			return 0, 0, err
		}
		defer pr.Close()
		if _, err := pr.Read(ctx, reads, func(i int, obj, raw []byte, err error) error { return err }); err != nil {
			return 0, 0, err
		}
	}
	return needed, objects, nil
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

func printTable(results []*result) {
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
	fmt.Println()
	for _, r := range results {
		fmt.Printf("%s: published %d NARs in %s, %d new chunks, %d deltas, %d packs, %d chunks written again (%d bytes)\n",
			r.name, r.sum.NARs, r.sum.Elapsed.Round(time.Millisecond), r.sum.NewChunks, r.sum.Deltas, r.sum.Packs, r.sum.Rewritten, r.sum.RewrittenBytes)
	}
}
