package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/urfave/cli/v2"
)

// The cache commands open the cache file themselves when no daemon holds it. bbolt
// lets one process open the file, so while the daemon runs, status, pin, unpin and gc
// go through its loopback admin API instead; verify and gc --compact need the file to
// themselves and ask for the daemon to be stopped.

func daemonAddrFlag() cli.Flag {
	return &cli.StringFlag{Name: "daemon", Value: "127.0.0.1:37515", Usage: "the running daemon's --listen address, asked before the cache file is opened (\"\": only the file)", EnvVars: env("daemon")}
}

// parseSize reads a byte count with an optional unit: 20GiB, 512MiB, 1.5G, 100000.
// Decimal units (kB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB, GiB, TiB,
// and the bare K, M, G, T) powers of 1024.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := len(t)
	for i > 0 && !(t[i-1] >= '0' && t[i-1] <= '9' || t[i-1] == '.') {
		i--
	}
	num, unit := strings.TrimSpace(t[:i]), strings.TrimSpace(t[i:])
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
		"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
		"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
		"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	}[strings.ToLower(unit)]
	if mult == 0 {
		return 0, fmt.Errorf("size %q: unknown unit %q (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)", s, unit)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("size %q: not a non-negative number with a unit", s)
	}
	v := f * mult
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(v), nil
}

// formatSignedSize is formatSize for counts that can be negative: a NAR whose
// chunks cost more than the whole file it was priced against.
func formatSignedSize(n int64) string {
	if n < 0 {
		return "-" + daemon.FormatBytes(-n)
	}
	return daemon.FormatBytes(n)
}

// openCache opens the cache for a command, or says a daemon holds it.
func openCache(c *cli.Context) (*localcache.Cache, error) {
	dir := c.String("state-dir")
	if dir == "" {
		return nil, usageError("no state directory: set --state-dir")
	}
	path := filepath.Join(dir, daemon.CacheFile)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("no cache at %s: %w", path, err)
	}
	return localcache.Open(path, localcache.Options{Timeout: time.Second})
}

// adminCall sends a request to the running daemon's admin API and decodes its answer,
// with the admin token from the state directory when the caller can read it (calls
// that change the cache need it).
func adminCall(ctx context.Context, stateDir, addr, route string, req, reply any) error {
	method, body := http.MethodGet, io.Reader(nil)
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return err
		}
		method, body = http.MethodPost, bytes.NewReader(b)
	}
	r, err := http.NewRequestWithContext(ctx, method, "http://"+addr+"/shoal/"+route, body)
	if err != nil {
		return err
	}
	if body != nil {
		r.Header.Set("Content-Type", "application/json")
	}
	token := daemon.ReadAdminToken(stateDir)
	if token == "" && req != nil {
		// The daemon says where its state directory is; whoever may read the token
		// there (root, the daemon's user) may change the cache.
		var st daemon.Status
		if adminCall(ctx, "", addr, "status", nil, &st) == nil && st.StateDir != "" {
			token = daemon.ReadAdminToken(st.StateDir)
		}
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		return fmt.Errorf("no shoal daemon answers at %s (set --daemon to its --listen address): %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("daemon at %s: %s: %s", addr, resp.Status, strings.TrimSpace(string(msg)))
	}
	if err := json.NewDecoder(resp.Body).Decode(reply); err != nil {
		return fmt.Errorf("reading the daemon's answer: %w", err)
	}
	return nil
}

// withCache runs online against a running daemon when one answers at --daemon,
// and offline against the cache file otherwise. The daemon is asked first because
// its state directory may be one the user can't read (a NixOS service's is 0700);
// a daemon that serves another state directory than an explicit --state-dir is
// not the one meant.
func withCache(c *cli.Context, offline func(*localcache.Cache) error, online func(addr string) error) error {
	addr := c.String("daemon")
	if addr != "" && daemonServes(c, addr) {
		return online(addr)
	}
	lc, err := openCache(c)
	if errors.Is(err, localcache.ErrLocked) {
		if err := online(addr); err != nil {
			return fmt.Errorf("the cache file is held by another process: %w", err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	defer lc.Close()
	return offline(lc)
}

// daemonServes reports whether a shoal daemon answers at addr for this command's
// state directory.
func daemonServes(c *cli.Context, addr string) bool {
	ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
	defer cancel()
	var st daemon.Status
	if err := adminCall(ctx, "", addr, "status", nil, &st); err != nil || !st.Daemon {
		return false
	}
	if !c.IsSet("state-dir") || st.StateDir == "" {
		return true
	}
	return sameDir(c.String("state-dir"), st.StateDir)
}

// sameDir compares two directory names after resolving them.
func sameDir(a, b string) bool {
	resolve := func(p string) string {
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		return p
	}
	return resolve(a) == resolve(b)
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the local cache's size, budget, pins and, from a running daemon, hit rates and bytes by source",
		Flags: []cli.Flag{stateDirFlag(), daemonAddrFlag(),
			&cli.StringFlag{Name: "cache-size", Usage: "the daemon's --cache-size, for the budget shown while it is stopped (default: what the daemon would use)", EnvVars: env("cache-size")},
			&cli.BoolFlag{Name: "json", Usage: "print JSON for scripts", EnvVars: env("json")}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError("status takes no arguments")
			}
			var st daemon.Status
			err := withCache(c, func(lc *localcache.Cache) (err error) {
				if st, err = daemon.CacheStatus(c.Context, lc); err != nil {
					return err
				}
				st.BudgetBytes, st.BudgetNote, err = stoppedDaemonBudget(c)
				return err
			}, func(addr string) error {
				return adminCall(c.Context, c.String("state-dir"), addr, "status", nil, &st)
			})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(c.App.Writer, st)
			return nil
		},
	}
}

// stoppedDaemonBudget is the budget the daemon applies when it starts: its
// --cache-size (through SHOAL_CACHE_SIZE too), else the default share of the file
// system. The cache file alone does not record it.
func stoppedDaemonBudget(c *cli.Context) (int64, string, error) {
	if c.IsSet("cache-size") {
		n, err := parseSize(c.String("cache-size"))
		if err != nil {
			return 0, "", usageError("--cache-size: %v", err)
		}
		return n, "--cache-size", nil
	}
	n, err := localcache.DefaultBudget(c.String("state-dir"))
	if err != nil {
		return 0, "", err
	}
	return n, fmt.Sprintf("the daemon's default: %d%% of the file system", localcache.DefaultBudgetPercent), nil
}

func printStatus(w io.Writer, st daemon.Status) {
	budget := "unbounded"
	if st.BudgetBytes > 0 {
		budget = daemon.FormatBytes(st.BudgetBytes)
	}
	if st.BudgetNote != "" {
		budget += " (" + st.BudgetNote + ")"
	}
	fmt.Fprintf(w, "cache file:   %s on disk, %s holding data, budget %s\n", daemon.FormatBytes(st.FileBytes), daemon.FormatBytes(st.UsedBytes), budget)
	if st.OverBudget {
		fmt.Fprintf(w, "              OVER BUDGET: pins hold more than the budget allows\n")
	}
	fmt.Fprintf(w, "chunks:       %d (%s stored), %d manifests, %d narinfos\n", st.Chunks, daemon.FormatBytes(st.ChunkBytes), st.Manifests, st.NarInfos)
	fmt.Fprintf(w, "pins:         %d paths, %s of chunks\n", len(st.Pins), daemon.FormatBytes(st.PinnedBytes))
	for _, p := range st.Pins {
		origin := ""
		if p.Origin != "" {
			origin = " (" + p.Origin + ")"
		}
		fmt.Fprintf(w, "              %s%s\n", p.StorePath, origin)
	}
	if !st.Daemon {
		fmt.Fprintf(w, "daemon:       not running (hit rates and bytes by source come from a running daemon)\n")
		return
	}
	switch {
	case st.StoreProblem != "":
		fmt.Fprintf(w, "store:        UNUSABLE: %s\n", st.StoreProblem)
	case st.Store != "":
		fmt.Fprintf(w, "store:        %s\n", st.Store)
	default:
		fmt.Fprintf(w, "store:        none (whole NARs from the upstream; chunks kept for later versions)\n")
	}
	fmt.Fprintf(w, "evicted:      %d chunks, %s since the daemon started\n", st.Evictions, daemon.FormatBytes(st.EvictedBytes))
	total := st.NarInfoHits + st.NarInfoMisses
	rate := 0.0
	if total > 0 {
		rate = 100 * float64(st.NarInfoHits) / float64(total)
	}
	fmt.Fprintf(w, "narinfo:      %d lookups, %.1f%% from the local cache\n", total, rate)
	fmt.Fprintf(w, "NARs:         %d being served, %d verify failures\n", st.NARsInFlight, st.VerifyFailures)
	sv := st.Savings
	share := 0.0
	if sv.WholeBytes > 0 {
		share = 100 * float64(sv.SavedBytes) / float64(sv.WholeBytes)
	}
	fmt.Fprintf(w, "saved:        %s of %s whole NAR files (%.1f%%), on %d NARs with a manifest: %d from chunks, %d whole\n",
		formatSignedSize(sv.SavedBytes), daemon.FormatBytes(sv.WholeBytes), share, sv.NARsFromChunks+sv.NARsWhole, sv.NARsFromChunks, sv.NARsWhole)
	fmt.Fprintf(w, "              %s by chunks already here, %s by deltas\n",
		formatSignedSize(sv.SavedBytes-sv.DeltaSavedBytes), formatSignedSize(sv.DeltaSavedBytes))
	sources := make([]string, 0, len(st.FetchedBytes))
	for s := range st.FetchedBytes {
		sources = append(sources, s)
	}
	sort.Strings(sources)
	for _, s := range sources {
		fmt.Fprintf(w, "fetched:      %-16s %s in %d objects\n", s, daemon.FormatBytes(st.FetchedBytes[s]), st.FetchedObjects[s])
	}
	fmt.Fprintf(w, "peers:        %d\n", len(st.Peers))
	for _, id := range st.Peers {
		fmt.Fprintf(w, "              %s\n", id)
	}
}

// pathArgs returns the command's store paths, expanded to their closures with
// --closure.
func pathArgs(c *cli.Context) ([]string, error) {
	if c.NArg() == 0 {
		return nil, usageError("%s needs at least one store path", c.Command.Name)
	}
	var paths []string
	for _, p := range c.Args().Slice() {
		if !c.Bool("closure") {
			paths = append(paths, p)
			continue
		}
		cl, err := daemon.Closure(c.Context, p)
		if err != nil {
			return nil, err
		}
		paths = append(paths, cl...)
	}
	for _, p := range paths {
		if _, err := localcache.PinHashPart(p); err != nil {
			return nil, usageError("%v", err)
		}
	}
	return paths, nil
}

func pinCommand() *cli.Command {
	return &cli.Command{
		Name:      "pin",
		Usage:     "keep the chunks of store paths' NARs from eviction",
		ArgsUsage: "STORE_PATH...",
		Description: `A pinned path's chunks are never evicted, even past --cache-size (the daemon warns
then). A path not fetched through shoal yet is pinned from its first fetch on.`,
		Flags: []cli.Flag{stateDirFlag(), daemonAddrFlag(),
			&cli.BoolFlag{Name: "closure", Usage: "pin each path's whole closure (nix-store --query --requisites)", EnvVars: env("closure")}},
		Action: func(c *cli.Context) error {
			paths, err := pathArgs(c)
			if err != nil {
				return err
			}
			err = withCache(c, func(lc *localcache.Cache) error {
				return lc.Pin("", paths)
			}, func(addr string) error {
				var r daemon.CountReply
				return adminCall(c.Context, c.String("state-dir"), addr, "pin", daemon.PathsRequest{Paths: paths}, &r)
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "pinned %d paths\n", len(paths))
			return nil
		},
	}
}

func unpinCommand() *cli.Command {
	return &cli.Command{
		Name:      "unpin",
		Usage:     "let the chunks of store paths' NARs be evicted again",
		ArgsUsage: "STORE_PATH...",
		Flags: []cli.Flag{stateDirFlag(), daemonAddrFlag(),
			&cli.BoolFlag{Name: "closure", Usage: "unpin each path's whole closure", EnvVars: env("closure")}},
		Action: func(c *cli.Context) error {
			paths, err := pathArgs(c)
			if err != nil {
				return err
			}
			var n int
			err = withCache(c, func(lc *localcache.Cache) (err error) {
				n, err = lc.Unpin(paths)
				return err
			}, func(addr string) error {
				var r daemon.CountReply
				err := adminCall(c.Context, c.String("state-dir"), addr, "unpin", daemon.PathsRequest{Paths: paths}, &r)
				n = r.Count
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "unpinned %d of %d paths\n", n, len(paths))
			return nil
		},
	}
}

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:  "gc",
		Usage: "evict least recently used chunks now, down to a size; --compact shrinks the file",
		Description: `Evicts unpinned chunks, least recently used first, until the cache's data takes at
most --cache-size bytes (the flag and SHOAL_CACHE_SIZE are shared with the daemon's
budget, so "shoal gc" with the daemon's environment evicts down to its budget). The file keeps its size (bbolt reuses the freed pages); --compact then
rewrites it without them, which needs the daemon stopped.`,
		Flags: []cli.Flag{stateDirFlag(), daemonAddrFlag(),
			&cli.StringFlag{Name: "cache-size", Usage: "evict down to this size (e.g. 5GiB); without it nothing is evicted", EnvVars: env("cache-size")},
			&cli.BoolFlag{Name: "compact", Usage: "rewrite the file without free pages (the daemon must be stopped)", EnvVars: env("compact")}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError("gc takes no arguments")
			}
			if !c.IsSet("cache-size") && !c.Bool("compact") {
				return usageError("gc needs --cache-size SIZE, --compact, or both")
			}
			if c.IsSet("cache-size") {
				to, err := parseSize(c.String("cache-size"))
				if err != nil {
					return usageError("--cache-size: %v", err)
				}
				var res localcache.EvictResult
				err = withCache(c, func(lc *localcache.Cache) (err error) {
					res, err = lc.Evict(c.Context, to)
					return err
				}, func(addr string) error {
					return adminCall(c.Context, c.String("state-dir"), addr, "gc", daemon.GCRequest{ToBytes: to}, &res)
				})
				if err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "evicted %d chunks (%s) and %d manifests; data %s -> %s\n",
					res.Evicted, daemon.FormatBytes(res.EvictedBytes), res.Manifests, daemon.FormatBytes(res.UsedBefore), daemon.FormatBytes(res.UsedAfter))
				if !res.TargetReached {
					fmt.Fprintf(c.App.Writer, "warning: %s is out of reach: %s pinned, %s held by NARs being served\n",
						daemon.FormatBytes(to), daemon.FormatBytes(res.PinnedBytes), daemon.FormatBytes(res.LeasedBytes))
				}
			}
			if c.Bool("compact") {
				path := filepath.Join(c.String("state-dir"), daemon.CacheFile)
				before, after, err := localcache.Compact(c.Context, path, time.Second)
				if errors.Is(err, localcache.ErrLocked) {
					return fmt.Errorf("gc --compact needs the cache to itself: stop the shoal daemon first (%w)", err)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "compacted %s -> %s\n", daemon.FormatBytes(before), daemon.FormatBytes(after))
			}
			return nil
		},
	}
}

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "re-check every chunk in the local cache against its ID (the daemon must be stopped)",
		Description: `Decodes every stored chunk and checks it hashes to its ID, and checks the index
against the stored chunks. Exits 1 when anything is wrong; --repair removes what is bad
(the daemon fetches those chunks again when a NAR needs them). A cache file whose
structure is damaged is salvaged first with --repair: every record still readable is
copied into a new file, the damaged one is kept beside it as cache.db.broken-<time>.`,
		Flags: []cli.Flag{stateDirFlag(),
			&cli.BoolFlag{Name: "repair", Usage: "remove bad chunks and dangling records, fix the totals", EnvVars: env("repair")}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError("verify takes no arguments")
			}
			lc, err := openCache(c)
			if errors.Is(err, localcache.ErrLocked) {
				return fmt.Errorf("verify needs the cache to itself: stop the shoal daemon first (%w)", err)
			}
			if errors.Is(err, localcache.ErrCorrupt) {
				if !c.Bool("repair") {
					return fmt.Errorf("%w; shoal verify --repair salvages what it can", err)
				}
				path := filepath.Join(c.String("state-dir"), daemon.CacheFile)
				rep, serr := localcache.Salvage(path, time.Second)
				if serr != nil {
					return serr
				}
				fmt.Fprintf(c.App.Writer, "salvaged %d records of the damaged cache file (moved to %s): %s\n", rep.Kept, rep.Aside, rep.Damage)
				lc, err = openCache(c)
			}
			if err != nil {
				return err
			}
			defer lc.Close()
			codec, err := chunk.NewCodec()
			if err != nil {
				return err
			}
			defer codec.Close()
			rep, err := lc.Verify(c.Context, codec, c.Bool("repair"))
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "checked %d chunks (%s): %d bad, %d dangling records, totals %s\n",
				rep.Checked, daemon.FormatBytes(rep.CheckedBytes), len(rep.Bad), rep.Dangling,
				map[bool]string{true: "wrong", false: "right"}[rep.CountersFixed])
			for _, id := range rep.Bad {
				fmt.Fprintf(c.App.Writer, "bad chunk %s\n", id)
			}
			if c.Bool("repair") {
				fmt.Fprintf(c.App.Writer, "removed %d records\n", rep.Removed)
				return nil
			}
			if !rep.Clean() {
				return cli.Exit("shoal: the cache has errors; run shoal verify --repair", 1)
			}
			return nil
		},
	}
}
