package main

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/shoal-nix/shoal/store"
	"github.com/shoal-nix/shoal/storegc"
	"github.com/shoal-nix/shoal/substituter"
	"github.com/urfave/cli/v2"
)

func storeCommand() *cli.Command {
	return &cli.Command{
		Name:  "store",
		Usage: "maintain a chunk store: collect garbage, verify",
		Subcommands: []*cli.Command{
			{
				Name:  "gc",
				Usage: "delete narinfos not kept, and the manifests and chunks nothing kept needs",
				Description: `Keeps the narinfos named in --keep-narinfos-from (store paths or their hash
parts, one a line) and those published within --keep-since, marks the chunks their
manifests list, and deletes every other narinfo, manifest and chunk — except objects
younger than --grace, which a running publish may still need. A publish that reuses a
chunk refreshes its time, so running gc while publishing is safe (see the storegc
package for the one-request window that remains).

Examples:
  shoal store gc --store /srv/shoal-store --keep-since 720h --dry-run
  shoal store gc --store 's3://chunks/store?region=eu-west-1' --keep-narinfos-from live.txt`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "store", Required: true, Usage: "chunk store (a directory, file:///dir or s3://bucket/prefix?region=&endpoint=)", EnvVars: env("store")},
					&cli.StringFlag{Name: "keep-narinfos-from", Usage: "keep the narinfos of the store paths listed in `FILE`", EnvVars: env("keep-narinfos-from")},
					&cli.DurationFlag{Name: "keep-since", Usage: "keep narinfos published within this long", EnvVars: env("keep-since")},
					&cli.DurationFlag{Name: "grace", Value: storegcDefaultGrace, Usage: "never delete anything younger than this", EnvVars: env("grace")},
					&cli.BoolFlag{Name: "dry-run", Usage: "report what would be deleted, delete nothing", EnvVars: env("dry-run")},
					&cli.IntFlag{Name: "jobs", Value: 16, Usage: "requests in flight", EnvVars: env("jobs")},
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
		},
	}
}

// storegcDefaultGrace is long enough for any publish of a large cache to have
// written its narinfos.
const storegcDefaultGrace = 24 * time.Hour

func runStoreGC(c *cli.Context) error {
	s, err := store.Open(c.String("store"), nil)
	if err != nil {
		return usageError("--store: %v", err)
	}
	opts := storegc.Options{
		KeepSince: c.Duration("keep-since"),
		Grace:     c.Duration("grace"),
		DryRun:    c.Bool("dry-run"),
		Jobs:      c.Int("jobs"),
		Logger:    slog.Default(),
	}
	if opts.KeepSince < 0 || opts.Grace < 0 {
		return usageError("--keep-since and --grace must not be negative")
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
	rep, err := storegc.Collect(c.Context, s, opts)
	verb := "freed"
	if opts.DryRun {
		verb = "would free"
	}
	fmt.Fprintf(c.App.Writer, `%s %d objects, %d bytes in %s
  narinfos:  %d deleted (%d bytes), %d kept
  manifests: %d deleted (%d bytes), %d kept
  chunks:    %d deleted (%d bytes), %d kept
  deltas:    %d deleted (%d bytes), %d kept
  spared as younger than --grace: %d
`, verb, rep.FreedObjects(), rep.FreedBytes(), rep.Elapsed.Round(1e6),
		rep.NarInfos.Deleted, rep.NarInfos.DeletedBytes, rep.NarInfos.Kept,
		rep.Manifests.Deleted, rep.Manifests.DeletedBytes, rep.Manifests.Kept,
		rep.Chunks.Deleted, rep.Chunks.DeletedBytes, rep.Chunks.Kept,
		rep.Deltas.Deleted, rep.Deltas.DeletedBytes, rep.Deltas.Kept, rep.Young)
	return err
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
		hp, err := substituter.ParseHashPart(line)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %v", name, n, err)
		}
		keep[hp] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return keep, nil
}

func runStoreVerify(c *cli.Context) error {
	s, err := store.Open(c.String("store"), nil)
	if err != nil {
		return usageError("--store: %v", err)
	}
	if c.Int("sample") < 0 {
		return usageError("--sample must not be negative")
	}
	rep, problems, err := storegc.Verify(c.Context, s, storegc.VerifyOptions{Sample: c.Int("sample"), Jobs: c.Int("jobs"), Logger: slog.Default()})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "checked %d chunks, %d manifests (%d of their deltas), %d narinfos: %d problems\n", rep.Chunks, rep.Manifests, rep.Deltas, rep.NarInfos, problems)
	for _, p := range rep.Problems {
		fmt.Fprintln(c.App.Writer, "  "+p)
	}
	if problems > 0 {
		return cli.Exit(fmt.Sprintf("shoal: store %s has %d problems", s, problems), 1)
	}
	return nil
}
