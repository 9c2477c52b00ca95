package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/shoal-nix/shoal/analyze/accesslog"
	"github.com/shoal-nix/shoal/blob"
	"github.com/urfave/cli/v2"
)

func analyzeLogsCommand() *cli.Command {
	formats := make([]string, len(accesslog.LogFormats))
	for i, f := range accesslog.LogFormats {
		formats[i] = string(f)
	}
	return &cli.Command{
		Name:      "logs",
		Usage:     "measure the load a reassembly service (shoal serve) would carry if old NARs left the main cache",
		ArgsUsage: "LOG_FILE...",
		Description: `Reads the access logs of a binary cache (its web server, S3 bucket or CloudFront
distribution) and answers, for each proposed retirement: how many NAR requests and
bytes would go to the reassembly service, what share of all NAR traffic that is, the
busiest minute it must carry (requests per minute, MB/s), and the hottest retired NARs.

A retirement is a cut-off age (--older-than; a list gives a sweep), meaning every NAR
file at least that old when it was requested is gone from the main cache, or a
keep-list (--keep-narinfos-from), meaning every NAR whose store path it does not name
is gone. Narinfos stay in the main cache either way, so narinfo requests are counted
apart. NAR traffic is a GET or HEAD of a /nar/ URL answered 200 or 206; bytes are the
bytes sent.

A NAR's age comes from the main cache (--cache: the NAR file's modification time, for
S3 its Last-Modified), which also names the store paths. Without --cache it is counted
from the NAR's first request in the logs, a lower bound: NARs older than the logs look
young. Logs are read twice, streaming; .gz and .zst files are decompressed. Formats:
combined (nginx, Apache), s3 (S3 server access logs), cloudfront (standard logs), or
auto to recognize each line. Malformed lines are counted and the first few quoted.

Examples:
  shoal analyze logs /var/log/nginx/access.log*
  shoal analyze logs --cache file:///srv/cache --older-than 30d,90d,180d,365d --out report/ access.log.gz
  shoal analyze logs --cache s3://cache-bucket --keep-narinfos-from keep.txt --format s3 logs/*`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "format", Value: string(accesslog.FormatAuto), Usage: "log format: " + strings.Join(formats, ", "), EnvVars: env("format")},
			&cli.StringSliceFlag{Name: "older-than", Value: cli.NewStringSlice("7d", "30d", "90d", "180d", "365d"), Usage: "cut-off `AGE`s to measure, e.g. 30d,90d (d days, w weeks, or a Go duration like 36h); the default sweep is dropped when only --keep-narinfos-from is given", EnvVars: env("older-than")},
			&cli.StringFlag{Name: "keep-narinfos-from", Usage: "`FILE` naming what stays in the main cache, one a line: store paths, hash parts, <hash>.narinfo or nar/ URLs (store paths need --cache)", EnvVars: env("keep-narinfos-from")},
			&cli.StringFlag{Name: "cache", Usage: "the main binary cache (file:///dir or s3://bucket): NAR upload times and store path names", EnvVars: env("cache")},
			&cli.IntFlag{Name: "top", Value: 10, Usage: "hottest retired NARs to list per retirement, by requests and by bytes", EnvVars: env("top")},
			&cli.StringFlag{Name: "out", Usage: "directory for summary.csv, minutes.csv, hottest.csv and logs.svg", EnvVars: env("out")},
			&cli.IntFlag{Name: "jobs", Value: 16, Usage: "concurrent requests to --cache", EnvVars: env("jobs")},
		},
		Action: runAnalyzeLogs,
	}
}

func runAnalyzeLogs(c *cli.Context) error {
	ctx := c.Context
	if c.NArg() == 0 {
		return usageError("analyze logs needs at least one log file")
	}
	files := c.Args().Slice()
	for _, f := range files {
		// Logs are read twice, so they must be files, not pipes.
		st, err := os.Stat(f)
		if err != nil {
			return usageError("%v", err)
		}
		if !st.Mode().IsRegular() {
			return usageError("%s is not a regular file (logs are read twice)", f)
		}
	}
	var opts accesslog.LogOptions
	var err error
	if opts.Format, err = accesslog.ParseLogFormat(c.String("format")); err != nil {
		return usageError("--format: %v", err)
	}
	keepFile := c.String("keep-narinfos-from")
	if c.IsSet("older-than") || keepFile == "" {
		for _, s := range c.StringSlice("older-than") {
			d, err := parseAge(s)
			if err != nil {
				return usageError("--older-than: %v", err)
			}
			if slices.Contains(opts.OlderThan, d) {
				return usageError("--older-than %s given twice", s)
			}
			opts.OlderThan = append(opts.OlderThan, d)
		}
		slices.Sort(opts.OlderThan)
	}
	if keepFile != "" {
		f, err := os.Open(keepFile)
		if err != nil {
			return usageError("--keep-narinfos-from: %v", err)
		}
		opts.Keep, err = accesslog.ReadKeepList(f, filepath.Base(keepFile))
		f.Close()
		if err != nil {
			return usageError("--keep-narinfos-from: %v", err)
		}
	}
	if opts.Top = c.Int("top"); opts.Top < 0 {
		return usageError("--top must not be negative")
	}
	opts.Examples = 5
	if u := c.String("cache"); u != "" {
		if c.Int("jobs") < 1 {
			return usageError("--jobs must be at least 1")
		}
		if strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://") {
			return usageError("--cache %s: NAR upload times need a cache that can be listed and stat'ed: file:// or s3://", u)
		}
		b, err := blob.Open(u, nil)
		if err != nil {
			return usageError("--cache: %v", err)
		}
		opts.Resolver = accesslog.CacheResolver{Backend: b, Jobs: c.Int("jobs")}
	} else if opts.Keep != nil && opts.Keep.NeedsStorePaths() {
		return usageError("--keep-narinfos-from names store paths: give --cache, whose narinfos map NAR URLs to store paths")
	}
	out := c.String("out")
	if out != "" {
		if err := os.MkdirAll(out, 0o755); err != nil {
			return fmt.Errorf("creating --out directory: %w", err)
		}
	}

	start := time.Now()
	slog.Info("analyzing access logs", "files", len(files))
	rep, err := accesslog.AnalyzeLogs(ctx, files, opts)
	if ctx.Err() != nil {
		return errInterrupted
	}
	if err != nil {
		return err
	}
	slog.Info("analyzed access logs", "requests", rep.Lines, "malformed", rep.Malformed, "took", time.Since(start).Round(time.Millisecond))
	if err := rep.WriteTable(c.App.Writer); err != nil {
		return fmt.Errorf("writing table: %w", err)
	}
	return writeReport(out,
		reportFile{"summary.csv", rep.WriteSummaryCSV},
		reportFile{"minutes.csv", rep.WriteMinutesCSV},
		reportFile{"hottest.csv", rep.WriteHotCSV},
		reportFile{"logs.svg", rep.WriteSVG},
	)
}
