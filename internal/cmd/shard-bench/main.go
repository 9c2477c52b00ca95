// Command shard-bench publishes one corpus into a packed store twice in the same run:
// once unsharded, and once as N workers (publish --shard I/N) running at once into one
// store, and prints the throughput of each, their ratio, and the duplicates the
// workers wrote (objects held more than once in the pack indexes):
//
//	go run ./internal/cmd/shard-bench [--shards 2] [--jobs 2] [--rounds 1] [--store-url URL] CORPUS
//
// CORPUS is a directory made by make-corpus (paths, pk, cache-zstd/) holding several
// packages: workers share packages out by name, so a corpus of one package's releases
// runs on one worker. --store-url (e.g. an s3:// URL with a prefix) puts the stores
// there, under unsharded/ and sharded/, instead of a temporary directory.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

func main() {
	shards := flag.Int("shards", 2, "workers of the sharded publish")
	jobs := flag.Int("jobs", 2, "publish --jobs of every publish (unsharded, and each worker)")
	storeURL := flag.String("store-url", "", "where the stores go (default: a temporary directory)")
	rounds := flag.Int("rounds", 1, "measure both this many times, alternating, and report the median ratio (a shared machine's speed drifts)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: shard-bench [--shards 2] [--jobs 2] [--rounds 1] [--store-url URL] CORPUS")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 || *shards < 1 || *rounds < 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(context.Background(), flag.Arg(0), *shards, *jobs, *rounds, *storeURL); err != nil {
		fmt.Fprintln(os.Stderr, "shard-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, corpus string, shards, jobs, rounds int, storeURL string) error {
	pathsRaw, err := os.ReadFile(filepath.Join(corpus, "paths"))
	if err != nil {
		return err
	}
	pk, err := os.ReadFile(filepath.Join(corpus, "pk"))
	if err != nil {
		return err
	}
	paths := strings.Fields(string(pathsRaw))
	var hps []string
	for _, p := range paths {
		hp, err := nixcache.ParseHashPart(p)
		if err != nil {
			return err
		}
		hps = append(hps, hp)
	}
	if storeURL == "" {
		dir, err := os.MkdirTemp("", "shard-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		storeURL = dir
	}
	at := func(sub string) string {
		if i := strings.IndexByte(storeURL, '?'); i >= 0 {
			return strings.TrimSuffix(storeURL[:i], "/") + "/" + sub + storeURL[i:]
		}
		return strings.TrimSuffix(storeURL, "/") + "/" + sub
	}
	publishTo := func(url string, shard publish.Shard) (publish.Summary, error) {
		src, err := blob.Open(filepath.Join(corpus, "cache-zstd"), nil)
		if err != nil {
			return publish.Summary{}, err
		}
		dst, err := chunkstore.Open(url, nil)
		if err != nil {
			return publish.Summary{}, err
		}
		kr, err := nixcache.ParseKeyring([]string{strings.TrimSpace(string(pk))})
		if err != nil {
			return publish.Summary{}, err
		}
		p, err := publish.New(nixcache.NewBinaryCache(src), dst, kr, publish.Options{
			Params: chunk.DefaultParams(), Jobs: jobs, Deltas: true, Layout: chunkstore.FormatPacked,
			Shard: shard, Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			return publish.Summary{}, err
		}
		defer p.Close()
		return p.Run(ctx, hps)
	}

	var whole publish.Summary
	var sums []publish.Summary
	var ratios []float64
	var ones, manys []time.Duration
	var wholeAt, shardedAt string
	for r := range rounds {
		wholeAt, shardedAt = at(fmt.Sprint("unsharded-", r)), at(fmt.Sprint("sharded-", r))
		start := time.Now()
		w, err := publishTo(wholeAt, publish.Shard{})
		if err != nil {
			return fmt.Errorf("unsharded publish: %w", err)
		}
		whole = w
		one := time.Since(start)

		start = time.Now()
		sums = make([]publish.Summary, shards)
		errs := make([]error, shards)
		var wg sync.WaitGroup
		for i := range shards {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sums[i], errs[i] = publishTo(shardedAt, publish.Shard{Index: i, Count: shards})
			}()
		}
		wg.Wait()
		many := time.Since(start)
		var narBytes int64
		for i, err := range errs {
			if err != nil {
				return fmt.Errorf("shard %d/%d: %w", i, shards, err)
			}
			narBytes += sums[i].NarBytes
		}
		if narBytes != whole.NarBytes {
			return fmt.Errorf("the shards published %d bytes of NAR, the unsharded run %d", narBytes, whole.NarBytes)
		}
		ones, manys = append(ones, one), append(manys, many)
		ratios = append(ratios, one.Seconds()/many.Seconds())
		fmt.Printf("round %d: unsharded %s, %d shards %s, ratio %.3f\n", r+1, one.Round(time.Millisecond), shards, many.Round(time.Millisecond), ratios[r])
	}
	med := func(ds []time.Duration) time.Duration { ds = slices.Clone(ds); slices.Sort(ds); return ds[len(ds)/2] }
	one, many := med(ones), med(manys)
	slices.Sort(ratios)

	dups := func(url string) (chunkstore.Duplicates, int64, error) {
		s, err := chunkstore.Open(url, nil)
		if err != nil {
			return chunkstore.Duplicates{}, 0, err
		}
		d, err := s.CountDuplicates(ctx)
		var bytes int64
		err2 := s.PackIndexes(ctx, func(id chunk.ID) error {
			x, err := s.PackIndex(ctx, id)
			if err == nil {
				bytes += int64(x.Size)
			}
			return err
		})
		if err == nil {
			err = err2
		}
		return d, bytes, err
	}
	wd, wbytes, err := dups(wholeAt)
	if err != nil {
		return err
	}
	sd, sbytes, err := dups(shardedAt)
	if err != nil {
		return err
	}
	mbps := func(d time.Duration) float64 { return float64(whole.NarBytes) / 1e6 / d.Seconds() }
	fmt.Printf("corpus: %d paths, %d bytes of NAR; --jobs %d per publish\n", len(hps), whole.NarBytes, jobs)
	fmt.Printf("%-22s %10s %12s %14s %16s\n", "", "MB/s", "pack bytes", "extra copies", "extra bytes")
	fmt.Printf("%-22s %10.1f %12d %14d %16d\n", "unsharded", mbps(one), wbytes, wd.Extra, wd.ExtraBytes)
	fmt.Printf("%-22s %10.1f %12d %14d %16d\n", fmt.Sprintf("%d shards at once", shards), mbps(many), sbytes, sd.Extra, sd.ExtraBytes)
	for i, s := range sums {
		fmt.Printf("  shard %d/%d: %d NARs (%d bytes), %d with a base, %d new chunks, %.1f MB/s\n", i, shards, s.NARs, s.NarBytes, s.WithBase, s.NewChunks, float64(s.NarBytes)/1e6/s.Elapsed.Seconds())
	}
	fmt.Printf("throughput sharded/unsharded, median of %d rounds: %.3f (range %.3f-%.3f); store bytes sharded/unsharded: %.3f\n",
		rounds, ratios[len(ratios)/2], ratios[0], ratios[len(ratios)-1], float64(sbytes)/float64(wbytes))
	return nil
}
