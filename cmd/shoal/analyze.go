package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/shoal-nix/shoal/analyze/dedup"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/delta"
	"github.com/shoal-nix/shoal/internal/progress"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/urfave/cli/v2"
)

// defaultSweep keeps Min and Max at a quarter and four times Avg, as the
// format's defaults do, and moves Avg around them.
var defaultSweep = []string{"4k/16k/64k", "8k/32k/128k", "16k/64k/256k", "32k/128k/512k", "64k/256k/1m"}

func analyzeCommand() *cli.Command {
	return &cli.Command{
		Name:  "analyze",
		Usage: "measure binary caches and chunk stores",
		Subcommands: []*cli.Command{{
			Name:      "dedup",
			Usage:     "measure how much chunking, deduplication and per-chunk zstd would save on a series of NARs",
			ArgsUsage: "(--all | STORE_PATH...)",
			Description: `Reads each NAR once, from a binary cache (--from) or from the local Nix store
(nix-store --dump), and measures every configuration of the sweep on it without
storing a chunk: unique chunk bytes, their size after per-chunk zstd at each level,
manifest bytes, chunk sizes, and per NAR the bytes it adds to the NARs before it (what
an upgrade costs a client that has them). Give the store paths in upgrade order; --all
sorts them by name. A configuration is a strategy ("nar": chunk the whole NAR, as the
chunk store does; "files": also cut after every file's contents) and MIN/AVG/MAX chunk
sizes. Narinfos from --from must be signed by a trusted key, and NAR bytes are checked
against their NarHash.

With --deltas, each NAR that has an earlier version among those analyzed (same package
name and output as Nix splits store path names, Nix's version order) is also priced as
a client upgrading from that version would fetch it from a store published with
deltas: its chunks the earlier version lacks, as full objects and as delta objects
against the earlier version's chunks (chosen as publish chooses them, --delta-bases,
--delta-level). These NARs are read a second time, through temporary files.

Examples:
  shoal analyze dedup --from file:///srv/cache --trusted-public-key k-1:AbC... --all --out report/
  shoal analyze dedup --sweep 16k/64k/256k --strategy nar --level default /nix/store/...-a /nix/store/...-b
  shoal analyze dedup --from file:///srv/cache --all --sweep 16k/64k/256k --strategy nar --deltas`,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "from", Usage: "binary cache to read (file:///dir, http(s)://host); without it, store paths are read from the local store", EnvVars: env("from")},
				&cli.StringSliceFlag{Name: "trusted-public-key", Value: cli.NewStringSlice(nixcache.DefaultTrustedKey), Usage: "accept narinfos signed by this key, `NAME:BASE64` (repeatable)", EnvVars: env("trusted-public-key")},
				&cli.BoolFlag{Name: "all", Usage: "analyze every narinfo of the (file://) cache, in store path name order", EnvVars: env("all")},
				&cli.StringSliceFlag{Name: "sweep", Value: cli.NewStringSlice(defaultSweep...), Usage: "chunk sizes `MIN/AVG/MAX` to measure, e.g. 16k/64k/256k (repeatable)", EnvVars: env("sweep")},
				&cli.StringSliceFlag{Name: "strategy", Value: cli.NewStringSlice("nar", "files"), Usage: "where chunks may be cut: nar (whole NAR) or files (also at file ends) (repeatable)", EnvVars: env("strategy")},
				&cli.StringSliceFlag{Name: "level", Value: cli.NewStringSlice("fastest", "default", "better", "best"), Usage: "zstd levels to compress each unique chunk at (repeatable)", EnvVars: env("level")},
				&cli.StringFlag{Name: "plot-level", Value: "default", Usage: "zstd level of the totals, ratios and plot; one of --level", EnvVars: env("plot-level")},
				&cli.StringFlag{Name: "out", Usage: "directory for summary.csv, nars.csv, sizes.csv and dedup.svg", EnvVars: env("out")},
				&cli.IntFlag{Name: "jobs", Value: runtime.NumCPU(), Usage: "NARs read at once (each feeds every configuration concurrently)", EnvVars: env("jobs")},
				&cli.BoolFlag{Name: "deltas", Value: true, Usage: "also price upgrades from each package's previous version as delta objects, as publish writes them by default (slower: encodes a delta per new chunk and configuration; --deltas=false to leave them out)", EnvVars: env("deltas")},
				&cli.IntFlag{Name: "delta-bases", Value: delta.DefaultBases, Usage: "base chunks per delta, as publish --delta-bases", EnvVars: env("delta-bases")},
				&cli.StringFlag{Name: "delta-level", Value: "default", Usage: "zstd level of deltas, as publish --delta-level", EnvVars: env("delta-level")},
			},
			Action: runAnalyzeDedup,
		}, analyzeLogsCommand()},
	}
}

func runAnalyzeDedup(c *cli.Context) error {
	ctx := c.Context
	if c.Bool("all") == (c.NArg() > 0) {
		return usageError("analyze dedup needs either --all or store paths, not both and not neither")
	}
	if c.Bool("all") && c.String("from") == "" {
		return usageError("--all needs --from")
	}
	var opts dedup.Options
	for _, s := range c.StringSlice("strategy") {
		st, err := dedup.ParseStrategy(s)
		if err != nil {
			return usageError("--strategy: %v", err)
		}
		for _, sw := range c.StringSlice("sweep") {
			p, err := dedup.ParseParams(sw)
			if err != nil {
				return usageError("--sweep: %v", err)
			}
			opts.Configs = append(opts.Configs, dedup.Config{Strategy: st, Params: p})
		}
	}
	for _, s := range c.StringSlice("level") {
		l, err := dedup.ParseLevel(s)
		if err != nil {
			return usageError("--level: %v", err)
		}
		if slices.Contains(opts.Levels, l) {
			return usageError("--level %s given twice", s)
		}
		opts.Levels = append(opts.Levels, l)
	}
	plot, err := dedup.ParseLevel(c.String("plot-level"))
	if err != nil {
		return usageError("--plot-level: %v", err)
	}
	plotIdx := slices.Index(opts.Levels, plot)
	if plotIdx < 0 {
		return usageError("--plot-level %s is not one of --level", plot)
	}
	if len(opts.Configs) == 0 {
		return usageError("nothing to measure: give --sweep and --strategy")
	}
	opts.Jobs = c.Int("jobs")
	if opts.Jobs < 1 {
		return usageError("--jobs must be at least 1")
	}
	if opts.Deltas = c.Bool("deltas"); opts.Deltas {
		if opts.DeltaBases = c.Int("delta-bases"); opts.DeltaBases < 1 || opts.DeltaBases > chunk.MaxDeltaBases {
			return usageError("--delta-bases %d: want 1 to %d", opts.DeltaBases, chunk.MaxDeltaBases)
		}
		if opts.DeltaLevel, err = dedup.ParseLevel(c.String("delta-level")); err != nil {
			return usageError("--delta-level: %v", err)
		}
	}
	out := c.String("out")
	if out != "" {
		if err := os.MkdirAll(out, 0o755); err != nil {
			return fmt.Errorf("creating --out directory: %w", err)
		}
	}

	var sources []dedup.Source
	if c.String("from") != "" {
		sources, err = cacheSources(ctx, c)
	} else {
		sources, err = localSources(c.Args().Slice())
	}
	if err != nil {
		return err
	}

	var total int64
	for _, s := range sources {
		total += int64(s.NarSize)
	}
	slog.Info("analyzing", "nars", len(sources), "nar_bytes", total, "configurations", len(opts.Configs), "levels", len(opts.Levels))
	finish := analyzeProgress(c.App.ErrWriter, &opts, len(sources), total)
	res, err := dedup.Run(ctx, sources, opts)
	finish()
	if ctx.Err() != nil {
		return errInterrupted
	}
	if err != nil {
		return err
	}
	if err := res.WriteTable(c.App.Writer, plotIdx); err != nil {
		return fmt.Errorf("writing table: %w", err)
	}
	return writeReport(out,
		reportFile{"summary.csv", res.WriteSummaryCSV},
		reportFile{"nars.csv", res.WriteNARsCSV},
		reportFile{"sizes.csv", res.WriteSizesCSV},
		reportFile{"dedup.svg", func(w io.Writer) error { return res.WriteSVG(w, plotIdx) }},
	)
}

// analyzeProgress shows analyze dedup's progress: on a terminal a bar for reading
// the NARs, then one for measuring deltas (which used to leave the screen empty);
// elsewhere a line now and then for each phase. The returned func ends the display.
func analyzeProgress(w io.Writer, opts *dedup.Options, nars int, total int64) (finish func()) {
	var mu sync.Mutex
	if isTerminal(w) {
		size := total
		if size == 0 {
			size = -1 // local paths: size unknown until read
		}
		bar := progressbar.NewOptions64(size, progressbar.OptionSetWriter(w), progressbar.OptionShowBytes(true),
			progressbar.OptionSetDescription(fmt.Sprintf("reading 0 of %d NARs", nars)), progressbar.OptionThrottle(100_000_000), progressbar.OptionClearOnFinish())
		opts.Progress = func(n int64) {
			mu.Lock()
			defer mu.Unlock()
			_ = bar.Add64(n)
		}
		opts.Step = func(phase string, done, all int) {
			mu.Lock()
			defer mu.Unlock()
			if phase == "reading" {
				bar.Describe(fmt.Sprintf("reading %d of %d NARs", done, all))
				return
			}
			if bar.GetMax64() != int64(all) {
				_ = bar.Finish()
				bar = progressbar.NewOptions(all, progressbar.OptionSetWriter(w), progressbar.OptionThrottle(100_000_000),
					progressbar.OptionSetDescription("measuring deltas of upgrades"), progressbar.OptionClearOnFinish())
			}
			_ = bar.Set(done)
		}
		return func() {
			mu.Lock()
			defer mu.Unlock()
			_ = bar.Finish()
		}
	}
	reading := progress.New(w, "reading", "NARs", nars, total, progressEvery, time.Now)
	var deltas *progress.Meter
	opts.Progress = reading.Add
	opts.Step = func(phase string, done, all int) {
		if phase == "reading" {
			reading.ItemDone()
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if deltas == nil {
			reading.Finish()
			deltas = progress.New(w, "measuring deltas", "upgrades", all, 0, progressEvery, time.Now)
		}
		deltas.ItemDone()
	}
	return func() {
		mu.Lock()
		defer mu.Unlock()
		if deltas != nil {
			deltas.Finish()
		} else {
			reading.Finish()
		}
	}
}

// reportFile is one file of an analysis report written with --out.
type reportFile struct {
	name  string
	write func(io.Writer) error
}

// writeReport writes files into dir, or nothing when dir is empty (no --out).
func writeReport(dir string, files ...reportFile) error {
	if dir == "" {
		return nil
	}
	for _, f := range files {
		if err := writeFile(filepath.Join(dir, f.name), f.write); err != nil {
			return err
		}
	}
	slog.Info("wrote report", "dir", dir)
	return nil
}

// cacheSources fetches and checks the narinfos of the requested store paths
// and returns sources that decompress and verify each NAR as it is read.
func cacheSources(ctx context.Context, c *cli.Context) ([]dedup.Source, error) {
	keys, err := trustedKeys(c)
	if err != nil {
		return nil, err
	}
	b, err := blob.Open(c.String("from"), nil)
	if err != nil {
		return nil, usageError("--from: %v", err)
	}
	cache := nixcache.NewBinaryCache(b)
	var hashParts []string
	if c.Bool("all") {
		err := cache.List(ctx, func(hp string) error {
			hashParts = append(hashParts, hp)
			return nil
		})
		if errors.Is(err, blob.ErrNotSupported) {
			return nil, usageError("--all needs a cache that can be listed (file://); name the store paths for %s", cache)
		}
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", cache, err)
		}
		if len(hashParts) == 0 {
			return nil, fmt.Errorf("%s holds no narinfo files: is it a binary cache?", cache)
		}
	} else {
		for _, a := range c.Args().Slice() {
			hp, err := nixcache.ParseHashPart(a)
			if err != nil {
				return nil, usageError("%q is not a store path: %v", a, err)
			}
			hashParts = append(hashParts, hp)
		}
	}
	infos := make([]*nixcache.NarInfo, 0, len(hashParts))
	for _, hp := range hashParts {
		ni, err := cache.NarInfo(ctx, hp)
		if err != nil {
			return nil, fmt.Errorf("fetching narinfo %s from %s: %w", hp, cache, err)
		}
		if _, err := keys.Verify(ni); err != nil {
			return nil, fmt.Errorf("refusing %s: %w", ni.StorePath, err)
		}
		infos = append(infos, ni)
	}
	if c.Bool("all") {
		// Store path names carry the versions; the hash before them is random.
		slices.SortStableFunc(infos, func(a, b *nixcache.NarInfo) int {
			return strings.Compare(storePathName(a.StorePath), storePathName(b.StorePath))
		})
	}
	sources := make([]dedup.Source, len(infos))
	for i, ni := range infos {
		sources[i] = dedup.Source{Name: ni.StorePath, NarSize: ni.NarSize, FileSize: ni.FileSize,
			Open: func(ctx context.Context) (io.ReadCloser, error) {
				rc, err := cache.OpenNAR(ctx, ni)
				if err != nil {
					return nil, err
				}
				return readCloser{nixcache.NewVerifyingReader(rc, ni.NarHash, ni.NarSize), rc}, nil
			}}
	}
	return sources, nil
}

func storePathName(p string) string {
	base := filepath.Base(p)
	if _, name, ok := strings.Cut(base, "-"); ok {
		return name
	}
	return base
}

// localSources reads store paths from the local Nix store with nix-store --dump,
// which serializes them as NARs.
func localSources(paths []string) ([]dedup.Source, error) {
	nixStore, err := exec.LookPath("nix-store")
	if err != nil {
		return nil, usageError("reading local store paths needs nix-store on PATH (or give --from): %v", err)
	}
	var sources []dedup.Source
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return nil, usageError("%s: %v", p, err)
		}
		sources = append(sources, dedup.Source{Name: p, Open: func(ctx context.Context) (io.ReadCloser, error) {
			cmd := exec.CommandContext(ctx, nixStore, "--dump", p)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				return nil, err
			}
			if err := cmd.Start(); err != nil {
				return nil, fmt.Errorf("starting nix-store --dump: %w", err)
			}
			return &dumpReader{ReadCloser: out, cmd: cmd, stderr: &stderr}, nil
		}})
	}
	return sources, nil
}

// dumpReader reports a failed nix-store --dump at the end of its output, so a
// NAR cut short never counts as a complete one.
type dumpReader struct {
	io.ReadCloser
	cmd    *exec.Cmd
	stderr *strings.Builder
	done   bool
}

func (d *dumpReader) Read(p []byte) (int, error) {
	n, err := d.ReadCloser.Read(p)
	if err == io.EOF && !d.done {
		d.done = true
		if werr := d.cmd.Wait(); werr != nil {
			return n, fmt.Errorf("nix-store --dump: %w: %s", werr, strings.TrimSpace(d.stderr.String()))
		}
	}
	return n, err
}

func (d *dumpReader) Close() error {
	err := d.ReadCloser.Close()
	if !d.done {
		d.done = true
		_ = d.cmd.Wait()
	}
	return err
}

type readCloser struct {
	io.Reader
	io.Closer
}

// writeFile writes a report file through a temporary name, so a failed run
// never leaves half a file under the real name.
func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
