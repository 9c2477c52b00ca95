package main

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/chunkstore/maintain"
	"github.com/shoal-nix/shoal/chunkstore/migrate"
	"github.com/shoal-nix/shoal/chunkstore/retire"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/urfave/cli/v2"
)

func storeCommand() *cli.Command {
	return &cli.Command{
		Name:  "store",
		Usage: "maintain a chunk store: collect garbage, verify, index NAR URLs, migrate to packs, retire NARs from the main cache",
		Subcommands: []*cli.Command{
			{
				Name:  "gc",
				Usage: "delete narinfos not kept, and the manifests and chunks nothing kept needs",
				Description: `Keeps the narinfos named in --keep-narinfos-from (store paths or their hash
parts, one a line) and those published within --keep-since, marks the chunks their
manifests list, and deletes every other narinfo, manifest and chunk — except objects
younger than --grace, which a running publish may still need. A publish that reuses a
chunk refreshes its time, so running gc while publishing is safe (see the chunkstore/maintain
package for the one-request window that remains).

In a packed store (layout 3) the objects of dropped paths go with their packs: a pack
with nothing live is deleted, one less than --repack-below live is repacked (its live
objects copied to new packs, the manifests pointing into it rewritten) and deleted by
the first gc one --grace later, so clients holding an old manifest keep working.

Examples:
  shoal store gc --store /srv/shoal-store --keep-since 30d --dry-run
  shoal store gc --store 's3://chunks/store?region=eu-west-1' --keep-narinfos-from live.txt`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "store", Required: true, Usage: "chunk store (a directory, file:///dir or s3://bucket/prefix?region=&endpoint=)", EnvVars: env("store")},
					&cli.StringFlag{Name: "keep-narinfos-from", Usage: "keep the narinfos of the store paths listed in `FILE`", EnvVars: env("keep-narinfos-from")},
					durationFlag("keep-since", 0, "keep narinfos published within this long, e.g. 30d"),
					durationFlag("grace", gcDefaultGrace, "never delete anything younger than this"),
					&cli.BoolFlag{Name: "dry-run", Usage: "report what would be deleted, delete nothing", EnvVars: env("dry-run")},
					&cli.IntFlag{Name: "jobs", Value: 16, Usage: "requests in flight", EnvVars: env("jobs")},
					&cli.Float64Flag{Name: "repack-below", Value: maintain.DefaultRepackBelow, Usage: "packed store: repack a pack whose live share is below this (0 to 1; negative: never)", EnvVars: env("repack-below")},
				},
				Action: runStoreGC,
			},
			{
				Name:  "verify",
				Usage: "check chunks against their IDs, manifests against their chunks, narinfos against their manifests",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "store", Required: true, Usage: "chunk store (a directory, file:///dir, http(s):// cannot be listed, s3://...)", EnvVars: env("store")},
					&cli.IntFlag{Name: "sample", Usage: "check only this many random objects of each kind (0: all)", EnvVars: env("sample")},
					&cli.IntFlag{Name: "jobs", Value: 16, Usage: "requests in flight", EnvVars: env("jobs")},
				},
				Action: runStoreVerify,
			},
			{
				Name:  "index",
				Usage: "write the NAR URL and name indexes shoal serve and publish --shard need, for a store published by an older shoal",
				Description: `shoal serve finds a narinfo by the NAR URL a client asks for through the index
publish writes (nar-urls/<URL>, holding the narinfo's hash part), and a sharded
publish finds delta bases through the name index (names/<pname>/<hash>-<name>).
Stores published before them have none; this reads every narinfo in the store and
writes the entries that are missing. Rerunning publish on the same paths does the same while the source cache
is still there. Safe to run at any time and to repeat.

Example:
  shoal store index --store /srv/shoal-store`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "store", Required: true, Usage: "chunk store (a directory, file:///dir or s3://bucket/prefix?region=&endpoint=)", EnvVars: env("store")},
					&cli.IntFlag{Name: "jobs", Value: 16, Usage: "requests in flight", EnvVars: env("jobs")},
				},
				Action: runStoreIndex,
			},
			{
				Name:  "migrate",
				Usage: "turn a store of one object per chunk (layout 1) into a packed store (layout 3), in place",
				Description: `For each manifest that is not yet version 3: read its chunk and delta objects,
check each chunk against its ID, append them to packs in NAR order (as a v3 publish
does, with the same --pack-size and --min-reuse-run), and rewrite the manifest as
version 3 once its packs are written. Clients keep reading throughout: they read a
version 3 manifest by location and an older one by object name, and the loose objects
stay. When every manifest is version 3, shoal-store.json switches to layout 3 and
later publishes write packs.

Resumable: stop it at any time (Ctrl-C) and run it again; it reuses the packs it
wrote. A manifest whose objects are missing or corrupt is reported and left as it is,
and the store does not switch until a publish of that path repairs it. Stop publishes
into the store while it runs, or run it again after them. Do not run store gc at the
same time.

The loose objects (chunks/, deltas/) are deleted by a later run with --finish, once
the switch is older than --grace: a client may have read an old manifest just before
its NAR was migrated.

Examples:
  shoal store migrate --store /srv/shoal-store
  shoal store migrate --store /srv/shoal-store --finish --grace 7d`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "store", Required: true, Usage: "chunk store (a directory, file:///dir or s3://bucket/prefix?region=&endpoint=)", EnvVars: env("store")},
					&cli.StringFlag{Name: "pack-size", Value: "32MiB", Usage: "close a pack at this size", EnvVars: env("pack-size")},
					&cli.StringFlag{Name: "min-reuse-run", Value: "64KiB", Usage: "chunks already packed for other NARs in runs shorter than this are packed again beside the NAR's others (0 reuses every run)", EnvVars: env("min-reuse-run")},
					&cli.BoolFlag{Name: "finish", Usage: "delete the loose objects of a migrated store, once the switch is older than --grace", EnvVars: env("finish")},
					durationFlag("grace", gcDefaultGrace, "with --finish: how long after the switch loose objects stay, longer than clients keep a manifest"),
					&cli.IntFlag{Name: "jobs", Value: 16, Usage: "requests in flight", EnvVars: env("jobs")},
				},
				Action: runStoreMigrate,
			},
			{
				Name:  "retire",
				Usage: "delete NAR files from the main binary cache that the chunk store holds verified",
				Description: `For each narinfo of the main cache (--from) that the rules select, deletes its
NAR file once the chunk store (--store) holds the same narinfo, signed by a
--trusted-public-key, and the NAR reassembled from the store's chunks matches its
NarHash and NarSize: exactly the check shoal serve makes before answering. The
narinfos stay in the main cache; clients that ask for a retired NAR must reach
shoal serve through the web server's or CDN's 404 fallback (docs/serve.md).

Select with --older-than (the NAR file's last modification) and/or
--keep-narinfos-from (store paths or hash parts, one a line: their NARs stay). Without
--apply nothing is deleted: the report says what would be freed.

Examples:
  shoal store retire --from /srv/cache --store /srv/shoal-store --older-than 90d
  shoal store retire --from s3://cache --store s3://chunks/store --keep-narinfos-from live.txt --apply`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "from", Required: true, Usage: "the main binary cache whose NAR files are deleted (a directory, file:///dir or s3://bucket/prefix?region=&endpoint=)", EnvVars: env("from")},
					&cli.StringFlag{Name: "store", Required: true, Usage: "the chunk store shoal serve reads", EnvVars: env("store")},
					durationFlag("older-than", 0, "retire only NAR files last modified longer ago than this, e.g. 90d"),
					&cli.StringFlag{Name: "keep-narinfos-from", Usage: "never retire the NARs of the store paths listed in `FILE`", EnvVars: env("keep-narinfos-from")},
					&cli.StringSliceFlag{Name: "trusted-public-key", Value: cli.NewStringSlice(nixcache.DefaultTrustedKey), Usage: "the keys shoal serve trusts, `NAME:BASE64` (repeatable): a NAR it would refuse is never retired", EnvVars: env("trusted-public-key")},
					&cli.BoolFlag{Name: "apply", Usage: "delete; without it, only report", EnvVars: env("apply")},
					&cli.IntFlag{Name: "jobs", Value: 4, Usage: "NARs checked at once", EnvVars: env("jobs")},
				},
				Action: runStoreRetire,
			},
		},
	}
}

// gcDefaultGrace is long enough for any publish of a large cache to have
// written its narinfos.
const gcDefaultGrace = 24 * time.Hour

func runStoreGC(c *cli.Context) error {
	s, err := chunkstore.Open(c.String("store"), nil)
	if err != nil {
		return usageError("--store: %v", err)
	}
	opts := maintain.Options{
		KeepSince: durationOf(c, "keep-since"),
		Grace:     durationOf(c, "grace"),
		DryRun:    c.Bool("dry-run"),
		Jobs:      c.Int("jobs"),
		Logger:    slog.Default(),
		// 0 would mean the default: ask for no repacking with a negative value.
		RepackBelow: c.Float64("repack-below"),
	}
	if opts.KeepSince < 0 || opts.Grace < 0 {
		return usageError("--keep-since and --grace must not be negative")
	}
	if opts.RepackBelow > 1 {
		return usageError("--repack-below must be at most 1")
	}
	if opts.RepackBelow == 0 {
		opts.RepackBelow = -1
	}
	if f := c.String("keep-narinfos-from"); f != "" {
		keep, err := readKeepList(f)
		if err != nil {
			return usageError("--keep-narinfos-from: %v", err)
		}
		opts.Keep = func(hp string) bool { return keep[hp] }
	}
	if opts.Keep == nil && opts.KeepSince == 0 {
		return usageError("store gc needs --keep-narinfos-from or --keep-since: without either it would delete every narinfo")
	}
	rep, err := maintain.Collect(c.Context, s, opts)
	printGCReport(c.App.Writer, rep, opts.DryRun)
	return err
}

// printGCReport writes store gc's summary: one line per kind of object, each with
// its own counts.
func printGCReport(w io.Writer, rep maintain.Report, dryRun bool) {
	verb := "freed"
	if dryRun {
		verb = "would free"
	}
	fmt.Fprintf(w, "%s %d objects, %d bytes in %s\n", verb, rep.FreedObjects(), rep.FreedBytes(), rep.Elapsed.Round(time.Millisecond))
	for _, k := range []struct {
		name string
		c    maintain.Counts
	}{{"narinfos:", rep.NarInfos}, {"manifests:", rep.Manifests}, {"chunks:", rep.Chunks}, {"deltas:", rep.Deltas}} {
		fmt.Fprintf(w, "  %-10s %d deleted (%d bytes), %d kept\n", k.name, k.c.Deleted, k.c.DeletedBytes, k.c.Kept)
	}
	fmt.Fprintf(w, "  NAR URL index entries: %d deleted\n", rep.NarURLs.Deleted)
	if p := rep.Packs; p.Packs > 0 {
		fmt.Fprintf(w, "  packs:     %d (%d bytes: %d live, %d dead)\n", p.Packs, p.Bytes, p.LiveBytes, p.DeadBytes)
		fmt.Fprintf(w, "    deleted: %d (%d bytes), kept %d\n", p.Deleted.Deleted, p.Deleted.DeletedBytes, p.Deleted.Kept)
		fmt.Fprintf(w, "    repacked: %d (%d bytes; deleted one --grace from now), waiting for --grace: %d\n", p.Repacked, p.RepackedBytes, p.Pending)
		fmt.Fprintf(w, "    repack cost: read %d bytes in %d requests, wrote %d packs (%d bytes, %d objects), %d manifests rewritten, %d writes\n",
			p.ReadBytes, p.ReadRequests, p.NewPacks, p.NewPackBytes, p.CopiedObjects, p.ManifestsRewritten, p.WriteRequests)
		fmt.Fprintf(w, "    duplicates: %d found (%d bytes), %d removed\n", p.Duplicates, p.DuplicateBytes, p.DuplicatesRemoved)
		fmt.Fprintf(w, "    bytes reclaimed: %d now, %d more when the repacked packs go\n", p.Reclaimed(), p.RepackedBytes)
	}
	fmt.Fprintf(w, "  spared as younger than --grace: %d\n", rep.Young)
}

// readKeepList reads store paths or hash parts, one a line; blank lines and lines
// starting with # are skipped. A line that is neither is an error, so a wrong file
// cannot silently keep nothing.
func readKeepList(name string) (map[string]bool, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	keep := map[string]bool{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		hp, err := nixcache.ParseHashPart(line)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", name, n, err)
		}
		keep[hp] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return keep, nil
}

func runStoreIndex(c *cli.Context) error {
	s, err := chunkstore.Open(c.String("store"), nil)
	if err != nil {
		return usageError("--store: %v", err)
	}
	rep, err := maintain.Index(c.Context, s, c.Int("jobs"), slog.Default())
	fmt.Fprintf(c.App.Writer, "%d narinfos: %d NAR URL index entries and %d name index entries added, %d narinfos not indexable\n", rep.NarInfos, rep.Added, rep.Names, rep.Refused)
	return err
}

func runStoreRetire(c *cli.Context) error {
	keys, err := trustedKeys(c)
	if err != nil {
		return err
	}
	cache, err := blob.Open(c.String("from"), nil)
	if err != nil {
		return usageError("--from: %v", err)
	}
	s, err := chunkstore.Open(c.String("store"), nil)
	if err != nil {
		return usageError("--store: %v", err)
	}
	opts := retire.Options{OlderThan: durationOf(c, "older-than"), Keys: keys, Apply: c.Bool("apply"), Jobs: c.Int("jobs"), Logger: slog.Default()}
	if opts.OlderThan < 0 {
		return usageError("--older-than must not be negative")
	}
	if f := c.String("keep-narinfos-from"); f != "" {
		keep, err := readKeepList(f)
		if err != nil {
			return usageError("--keep-narinfos-from: %v", err)
		}
		opts.Keep = func(hp string) bool { return keep[hp] }
	}
	if opts.Keep == nil && opts.OlderThan == 0 {
		return usageError("store retire needs --older-than or --keep-narinfos-from: without either it would retire every NAR")
	}
	rep, err := retire.Run(c.Context, cache, s, opts)
	if rep == nil {
		return err
	}
	verb := "retired"
	if !opts.Apply {
		verb = "would retire (dry run; --apply deletes)"
	}
	fmt.Fprintf(c.App.Writer, `%s %d NAR files, %d bytes, in %s
  narinfos in the cache:            %d
  kept (keep list or too young):    %d
  NAR file already gone:            %d
  not in the store:                 %d
  store check failed:               %d
  NAR file shared with a kept path: %d
`, verb, rep.Retired, rep.FreedBytes, rep.Elapsed.Round(1e6), rep.NarInfos, rep.Kept, rep.Gone, rep.NotInStore, rep.Failed, rep.Shared)
	for _, f := range rep.Failures {
		fmt.Fprintln(c.App.Writer, "  "+f)
	}
	return err
}

func runStoreMigrate(c *cli.Context) error {
	s, err := chunkstore.Open(c.String("store"), nil)
	if err != nil {
		return usageError("--store: %v", err)
	}
	packSize, minRun, err := packFlags(c)
	if err != nil {
		return err
	}
	opts := migrate.Options{
		PackSize:    int(packSize),
		MinReuseRun: int(minRun),
		Jobs:        c.Int("jobs"),
		Finish:      c.Bool("finish"),
		Grace:       durationOf(c, "grace"),
		Logger:      slog.Default(),
	}
	if opts.Grace < 0 {
		return usageError("--grace must not be negative")
	}
	rep, err := migrate.Run(c.Context, s, opts)
	layout := "1 (not switched yet)"
	if rep.Packed {
		layout = "3"
	}
	fmt.Fprintf(c.App.Writer, `migrated %d of %d manifests in %s (%d were version 3 already, %d failed)
  packs written: %d, %d bytes (%d chunks packed again for --min-reuse-run)
  store layout:  %s
`, rep.Migrated, rep.Manifests, rep.Elapsed.Round(time.Millisecond), rep.AlreadyPacked, rep.Failed, rep.Packs, rep.PackBytes, rep.Copies, layout)
	if opts.Finish {
		fmt.Fprintf(c.App.Writer, "  loose objects deleted: %d\n", rep.LooseDeleted)
	}
	if c.Context.Err() != nil {
		return errInterrupted
	}
	return err
}

func runStoreVerify(c *cli.Context) error {
	s, err := chunkstore.Open(c.String("store"), nil)
	if err != nil {
		return usageError("--store: %v", err)
	}
	if c.Int("sample") < 0 {
		return usageError("--sample must not be negative")
	}
	rep, problems, err := maintain.Verify(c.Context, s, maintain.VerifyOptions{Sample: c.Int("sample"), Jobs: c.Int("jobs"), Logger: slog.Default()})
	if err != nil {
		return err
	}
	packs := ""
	if rep.Packs > 0 {
		packs = fmt.Sprintf(" in %d packs", rep.Packs)
	}
	fmt.Fprintf(c.App.Writer, "checked %d chunks%s, %d manifests (%d of their deltas), %d narinfos: %d problems\n", rep.Chunks, packs, rep.Manifests, rep.Deltas, rep.NarInfos, problems)
	for _, p := range rep.Problems {
		fmt.Fprintln(c.App.Writer, "  "+p)
	}
	if problems > 0 {
		return cli.Exit(fmt.Sprintf("shoal: store %s has %d problems", s, problems), 1)
	}
	return nil
}
