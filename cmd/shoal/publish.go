package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/shoal-nix/shoal/analyze/dedup"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/delta"
	"github.com/shoal-nix/shoal/internal/progress"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
	"github.com/urfave/cli/v2"
)

func publishCommand() *cli.Command {
	return &cli.Command{
		Name:      "publish",
		Usage:     "build or extend a chunk store from a Nix binary cache",
		ArgsUsage: "(--all | STORE_PATH...)",
		Description: `For each store path: fetch its narinfo and refuse it unless a trusted key signed
it, fetch and decompress the NAR, check NarHash and NarSize, cut it into chunks, and
write the chunks the store lacks, then the manifest, then the narinfo. Each file is
written atomically in that order, so an interrupted publish leaves nothing a reader can
trip on, and running the same command again finishes the job.

STORE_PATH may be a full store path, its base name or its 32-character hash.

Examples:
  shoal publish --from file:///srv/cache --to /srv/shoal-store --all
  shoal publish --from https://cache.example.org --to ./store \
      --trusted-public-key example-1:AbC... /nix/store/abc...-hello-2.12

Deltas (on by default): each NAR's base is the NAR of the same package (same name as
Nix splits it, same output) with the highest version at or below its own, else the
newest, found among the store's narinfos and the NARs published earlier in the same
run (a run publishes each package's versions in version order). Every chunk the base
lacks also gets a delta object: the chunk compressed against --delta-bases chunks of
the base at the same place (as far past the last chunk both share as the new chunk
is), kept when at most 90% of the chunk's own object. A client that holds the base
downloads the deltas instead of the chunks: on Go toolchain releases 2-18% of the xz
NAR instead of 17-77%. Full chunk objects are still written, so clients without the
base lose nothing. Deltas cost publish time (about half the speed) and 1-9% more store
space (docs/deltas.md); --deltas=false turns them off. A NAR without a base gets a
version 1 manifest.

Layout: a new store gets one object per chunk and per delta unless --layout v3 asks
for pack files (docs/format.md, "Store layout 3"): the same objects appended to
write-once packs of --pack-size, each NAR's new objects together in NAR order, and
manifests that say where each object lies, so clients fetch with a few ranged reads.
The layout is recorded in the store; later publishes keep it without the flag, and a
publish asking for the other layout is refused. shoal daemon, shoal serve and shoal
store verify read packed stores; gc of a packed store needs repacking, not available
yet.

Delta-primary (--delta-primary, v3 stores): a new chunk that has a delta against the
base's chunks is stored as that delta only, and a chunk the base stores without a full
object is referred to the base; the other chunks get full objects, the keyframes. The
store is then much smaller, and a client rebuilds a chunk through the chain of base
manifests: one more manifest and delta per step, at most --max-chain steps. Deeper
chains make a smaller store (fewer keyframes) and more reads for a client that holds
no earlier release, which walks the chain from its last keyframe; a client that holds
the previous release reads only the deltas either way. The mode and the bound are
recorded in the store (shoal-store.json): later publishes keep them without the flags,
and one asking for another bound is refused. An existing v3 store becomes
delta-primary from its next publish with --delta-primary; its older NARs are keyframes.

Many machines (--shard I/N): N workers publish one cache into one store at once,
each started with the same store paths (or --all) and its own I, counted from 0, so
0 <= I < N. A worker takes the paths whose package name (as Nix splits it) hashes to
I, so every version of a package is on one worker and finds its delta base there.
Paths named with their names (/nix/store/<hash>-<name> or <hash>-<name>) are shared
out before anything is read; for a bare hash (and with --all, every path of the
cache) each worker reads the narinfo to learn the name. Workers never read an index
of the whole store: bases from earlier runs are found through the store's name index
(names/<pname>/, one listing per package), and in a v3 store a worker reuses the
chunks its own run wrote and those its bases' manifests point at; a chunk shared with
a package of another worker is written by both, a duplicate the next repack folds.
A batch system's array job runs it as it is:
  Kubernetes Indexed Job:  shoal publish --shard "$JOB_COMPLETION_INDEX/8" ...
  Slurm (--array=0-7):     shoal publish --shard "$SLURM_ARRAY_TASK_ID/8" ...
  by hand:                 shoal publish --shard 0/2 ... & shoal publish --shard 1/2 ...
A store published before the name index existed gets it from shoal store index.

xz NARs are decoded by the xz program when it is on PATH (about twice as fast as
the built-in decoder).`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "from", Required: true, Usage: "binary cache to read (file:///dir, http(s)://host, s3://bucket/prefix?region=&endpoint=)", EnvVars: env("from")},
			&cli.StringFlag{Name: "to", Required: true, Usage: "chunk store to write (a directory, file:///dir or s3://bucket/prefix?region=&endpoint=)", EnvVars: env("to")},
			&cli.StringSliceFlag{Name: "trusted-public-key", Value: cli.NewStringSlice(nixcache.DefaultTrustedKey), Usage: "accept narinfos signed by this key, `NAME:BASE64` (repeatable)", EnvVars: env("trusted-public-key")},
			&cli.IntFlag{Name: "jobs", Value: runtime.NumCPU(), Usage: "NARs processed at once", EnvVars: env("jobs")},
			&cli.BoolFlag{Name: "all", Usage: "publish every narinfo of the (file://) cache", EnvVars: env("all")},
			&cli.IntFlag{Name: "chunk-min", Value: chunk.DefaultParams().Min, Usage: "FastCDC minimum chunk size in bytes (part of the format: a store never mixes)", EnvVars: env("chunk-min")},
			&cli.IntFlag{Name: "chunk-avg", Value: chunk.DefaultParams().Avg, Usage: "FastCDC average chunk size in bytes, a power of two", EnvVars: env("chunk-avg")},
			&cli.IntFlag{Name: "chunk-max", Value: chunk.DefaultParams().Max, Usage: "FastCDC maximum chunk size in bytes", EnvVars: env("chunk-max")},
			&cli.BoolFlag{Name: "deltas", Value: true, Usage: "also write delta objects of each NAR's new chunks against the previous version of its package (--deltas=false to turn off)", EnvVars: env("deltas")},
			&cli.IntFlag{Name: "delta-bases", Value: delta.DefaultBases, Usage: fmt.Sprintf("base chunks around the same place in the base that make a delta's dictionary (1..%d): more find more moved content and encode slower", chunk.MaxDeltaBases), EnvVars: env("delta-bases")},
			&cli.StringFlag{Name: "layout", Usage: "layout of a new store: v1 (one object per chunk; the default) or v3 (pack files); an existing store keeps its own", EnvVars: env("layout")},
			&cli.StringFlag{Name: "pack-size", Value: "32MiB", Usage: "close a pack at this size (v3 stores; 16MiB..64MiB advised)", EnvVars: env("pack-size")},
			&cli.StringFlag{Name: "min-reuse-run", Value: "64KiB", Usage: "v3 stores: chunks the store holds in runs shorter than this are written again beside the NAR's new chunks (fewer requests per NAR, a larger store; 0 reuses every run)", EnvVars: env("min-reuse-run")},
			&cli.StringFlag{Name: "shard", Usage: "worker `I/N`: the I-th (counted from 0) of N publishing into one store at once; takes the paths whose package name hashes to I (see below)", EnvVars: env("shard")},
			&cli.BoolFlag{Name: "delta-primary", Usage: "v3 stores: store each new chunk that has a delta as that delta only, keeping full objects (keyframes) only where chains would get deeper than --max-chain (see below); the store remembers it", EnvVars: env("delta-primary")},
			&cli.IntFlag{Name: "max-chain", Usage: fmt.Sprintf("delta-primary stores: most manifests a client walks to rebuild a chunk, 1..%d (default %d for a new store; an existing store keeps its own): deeper chains make a smaller store and more reads for a client without the previous release", chunkstore.MaxChainLimit, chunkstore.DefaultMaxChain), EnvVars: env("max-chain")},
			&cli.StringFlag{Name: "keyframe-level", Value: "best", Usage: "delta-primary stores: zstd level of the full chunk objects (keyframes): fastest, default, better or best (best: 8-9% smaller than default, decoded as fast, encoded at about the speed deltas are)", EnvVars: env("keyframe-level")},
			&cli.StringFlag{Name: "delta-level", Value: "default", Usage: "zstd level of delta objects: fastest, default, better or best (better: 3% smaller on binaries, 13% on text, publish up to 20% slower)", EnvVars: env("delta-level")},
		},
		Action: runPublish,
	}
}

func runPublish(c *cli.Context) error {
	ctx := c.Context
	if c.Bool("all") == (c.NArg() > 0) {
		return usageError("publish needs either --all or store paths, not both and not neither")
	}
	keys, err := trustedKeys(c)
	if err != nil {
		return err
	}
	var shard publish.Shard
	if v := c.String("shard"); v != "" {
		if shard, err = publish.ParseShard(v); err != nil {
			return usageError("--shard: %v", err)
		}
	}
	srcBlob, err := blob.Open(c.String("from"), nil)
	if err != nil {
		return usageError("--from: %v", err)
	}
	src := nixcache.NewBinaryCache(srcBlob)
	dst, err := chunkstore.Open(c.String("to"), nil)
	if err != nil {
		return usageError("--to: %v", err)
	}
	var hashParts []string
	if c.Bool("all") {
		err := src.List(ctx, func(hp string) error {
			hashParts = append(hashParts, hp)
			return nil
		})
		if errors.Is(err, blob.ErrNotSupported) {
			return usageError("--all needs a cache that can be listed (file://); name the store paths for %s", src)
		}
		if err != nil {
			return fmt.Errorf("listing %s: %w", src, err)
		}
		if len(hashParts) == 0 {
			return fmt.Errorf("%s holds no narinfo files: is it a binary cache?", src)
		}
	} else {
		for _, a := range c.Args().Slice() {
			hp, err := nixcache.ParseHashPart(a)
			if err != nil {
				return usageError("%q is not a store path: %v", a, err)
			}
			// A path named with its name is another worker's or not without reading
			// its narinfo; a bare hash is decided once the narinfo tells the name.
			if shard.Sharded() && len(a) > len(hp) && !shard.Has(a) {
				continue
			}
			hashParts = append(hashParts, hp)
		}
	}

	if n := c.Int("delta-bases"); n < 1 || n > chunk.MaxDeltaBases {
		return usageError("--delta-bases %d: want 1 to %d", n, chunk.MaxDeltaBases)
	}
	level, err := dedup.ParseLevel(c.String("delta-level"))
	if err != nil {
		return usageError("--delta-level: %v", err)
	}
	keyLevel, err := dedup.ParseLevel(c.String("keyframe-level"))
	if err != nil {
		return usageError("--keyframe-level: %v", err)
	}
	if !c.IsSet("keyframe-level") {
		keyLevel = 0 // the default, and no claim that the store is delta-primary
	}
	if n := c.Int("max-chain"); c.IsSet("max-chain") && (n < 1 || n > chunkstore.MaxChainLimit) {
		return usageError("--max-chain %d: want 1 to %d", n, chunkstore.MaxChainLimit)
	}
	if c.IsSet("delta-primary") && !c.Bool("delta-primary") {
		// A delta-primary store stays one: its chains need every later NAR to keep them.
		if meta, err := dst.Meta(ctx); err == nil && meta.DeltaPrimary {
			return usageError("--delta-primary=false: store %s is delta-primary, and stays so", dst)
		}
	}
	layout := 0
	switch c.String("layout") {
	case "":
	case "v1", "1":
		layout = chunkstore.FormatVersion
	case "v3", "3":
		layout = chunkstore.FormatPacked
	default:
		return usageError("--layout %q: want v1 or v3", c.String("layout"))
	}
	packSize, minRun, err := packFlags(c)
	if err != nil {
		return err
	}
	opts := publish.Options{
		Shard:       shard,
		MinReuseRun: int(minRun),
		Layout:      layout,
		PackSize:    int(packSize),
		Params:      chunk.Params{Min: c.Int("chunk-min"), Avg: c.Int("chunk-avg"), Max: c.Int("chunk-max")},
		Jobs:        c.Int("jobs"),
		Logger:      slog.Default(),
		Deltas:      c.Bool("deltas"),
		DeltaBases:  c.Int("delta-bases"),
		DeltaLevel:  level,

		DeltaPrimary:  c.Bool("delta-primary"),
		MaxChain:      c.Int("max-chain"),
		KeyframeLevel: keyLevel,
	}
	errOut := c.App.ErrWriter
	var bar *progressbar.ProgressBar
	var meter *progress.Meter
	if isTerminal(errOut) {
		// On a terminal the bar replaces per-NAR lines; problems are still logged.
		opts.Logger = slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{Level: slog.LevelWarn}))
		var once sync.Once
		var mu sync.Mutex
		var nars, bytes int64
		show := func() {
			bar.Describe(fmt.Sprintf("publishing %d of %d NARs", nars, len(hashParts)))
			_ = bar.Set64(bytes)
		}
		opts.Progress = func(done, total int64) {
			mu.Lock()
			defer mu.Unlock()
			once.Do(func() {
				bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(errOut),
					progressbar.OptionShowBytes(true), progressbar.OptionSetDescription("publishing"),
					progressbar.OptionThrottle(100_000_000), progressbar.OptionClearOnFinish())
			})
			bytes = done
			show()
		}
		opts.NARDone = func() {
			mu.Lock()
			defer mu.Unlock()
			nars++
			if bar != nil {
				show()
			}
		}
	} else {
		// Elsewhere (a journal, CI, a file) a line now and then, so an hours-long
		// publish is not silent.
		var once sync.Once
		start := func(total int64) {
			once.Do(func() {
				meter = progress.New(errOut, "publishing", "NARs", len(hashParts), total, progressEvery, time.Now)
			})
		}
		opts.Progress = func(done, total int64) {
			start(total)
			meter.SetBytes(done)
		}
		opts.NARDone = func() {
			start(0)
			meter.ItemDone()
		}
	}
	slog.Info("publishing", "from", src.String(), "to", dst.String(), "paths", len(hashParts), "shard", shard, "chunker", opts.Params.Identity(), "xz_decoder", nixcache.XZDecoder())
	p, err := publish.New(src, dst, keys, opts)
	if err != nil {
		return err
	}
	defer p.Close()
	sum, err := p.Run(ctx, hashParts)
	if bar != nil {
		_ = bar.Finish()
	}
	if meter != nil {
		meter.Finish()
	}
	printSummary(errOut, sum)
	if ctx.Err() != nil {
		return errInterrupted
	}
	return err
}

func printSummary(w io.Writer, s publish.Summary) {
	ratio := "n/a"
	if s.SourceBytes > 0 {
		ratio = fmt.Sprintf("%.3f", float64(s.NewBytes)/float64(s.SourceBytes))
	}
	mbps := 0.0
	if s.Elapsed > 0 {
		mbps = float64(s.NarBytes) / 1e6 / s.Elapsed.Seconds()
	}
	if s.OtherShards > 0 {
		fmt.Fprintf(w, "left %d store paths to other shards\n", s.OtherShards)
	}
	fmt.Fprintf(w, `published %d NARs (%d already complete, %d refused) in %s
  NAR bytes:            %d (%.1f MB/s)
  source cache bytes:   %d (compressed NARs)
  chunks:               %d, of which new: %d
  new chunk bytes:      %d (%s of the source cache's size)
  deltas:               %d in %d NARs with a base, %d bytes, saving %d bytes over their chunks
`, s.NARs, s.Skipped, s.Refused, s.Elapsed.Round(1e7), s.NarBytes, mbps, s.SourceBytes, s.Chunks, s.NewChunks, s.NewBytes, ratio,
		s.Deltas, s.WithBase, s.DeltaBytes, s.DeltaSaved)
	if s.DeltaOnly+s.InBase+s.Keyframes > 0 {
		fmt.Fprintf(w, "  delta-primary:        %d chunks stored as their delta only, %d entries in the base NAR, %d keyframes (%d bytes; %d of them where a chain would pass --max-chain)\n",
			s.DeltaOnly, s.InBase, s.Keyframes, s.KeyframeBytes, s.ChainCapped)
	}
	if s.Packs > 0 {
		fmt.Fprintf(w, "  packs:                %d, %d bytes (%d chunks in short runs written again, %d bytes)\n", s.Packs, s.PackBytes, s.Rewritten, s.RewrittenBytes)
	}
}

// packFlags reads --pack-size and --min-reuse-run, shared by publish and store
// migrate. A minimum run of 0 comes back negative, which publish.Options and
// migrate.Options read as "reuse every run".
func packFlags(c *cli.Context) (packSize, minRun int64, err error) {
	packSize, err = parseSize(c.String("pack-size"))
	if err != nil || packSize < 1<<20 || packSize > 1<<30 {
		return 0, 0, usageError("--pack-size %q: want a size from 1MiB to 1GiB, such as 32MiB", c.String("pack-size"))
	}
	minRun, err = parseSize(c.String("min-reuse-run"))
	if err != nil || minRun < 0 || minRun > 1<<30 {
		return 0, 0, usageError("--min-reuse-run %q: want a size from 0 to 1GiB, such as 64KiB", c.String("min-reuse-run"))
	}
	if minRun == 0 {
		minRun = -1
	}
	return packSize, minRun, nil
}
