package main

import (
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"time"

	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/origin"
	"github.com/urfave/cli/v2"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "answer a binary cache's NAR URLs from a chunk store, for NARs retired from the cache",
		Description: `shoal serve is the fallback behind a CDN or web server for NAR files that
` + "`shoal store retire`" + ` deleted from the main cache: the narinfos stay in the main
cache, and a request for a NAR URL the cache no longer has is passed here (see
docs/serve.md for the nginx, CloudFront and Fastly set-ups). It answers the URLs the
original narinfos name, in the compression they state:

  zstd  the stored chunk frames, passed through (no recompression)
  xz    a valid xz file of uncompressed LZMA2 chunks: not the original file (Nix checks
        NarHash, not FileHash), but the same bytes every time, with Content-Length
  none  the NAR

Every NAR is checked before its first byte: its narinfo must be signed by a
--trusted-public-key and the chunks must make its NarHash and NarSize. A URL the store
does not hold (or holds unsigned) is a 404; an unreachable or damaged store is a 502;
a full queue is a 503. Metrics are at /metrics; /healthz answers 503 while the store is unreachable.

The store must have the NAR URL index publish writes (nar-urls/); for a store
published by an older shoal, run ` + "`shoal store index`" + ` once.

Example:
  shoal serve --store s3://chunks/store?region=eu-west-1 --listen 127.0.0.1:8090 \
      --trusted-public-key cache.example.org-1:AbC...`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "store", Required: true, Usage: "chunk store written by shoal publish (a directory, file:///dir, http(s)://, s3://bucket/prefix?region=&endpoint=)", EnvVars: env("store")},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8090", Usage: "address to serve on (the CDN or web server in front connects here)", EnvVars: env("listen")},
			&cli.StringSliceFlag{Name: "trusted-public-key", Value: cli.NewStringSlice(nixcache.DefaultTrustedKey), Usage: "serve only NARs whose narinfo is signed by this key, `NAME:BASE64` (repeatable)", EnvVars: env("trusted-public-key")},
			&cli.IntFlag{Name: "max-active", Value: 64, Usage: "NAR requests verified or streamed at once; more wait in line (each holds up to --prefetch chunks, 256 KiB each at most, in memory)", EnvVars: env("max-active")},
			durationFlag("queue-timeout", 30*time.Second, "how long a request may wait for a slot before it gets 503 Service Unavailable"),
			&cli.StringFlag{Name: "chunk-cache-size", Value: "256MiB", Usage: "memory for hot chunks shared between requests, e.g. 1GiB (0: none)", EnvVars: env("chunk-cache-size")},
			&cli.StringFlag{Name: "memory-limit", Usage: "soft limit on the Go heap (runtime/debug.SetMemoryLimit), e.g. 1GiB: the garbage collector works harder near it (default: twice --chunk-cache-size plus 256MiB; GOMEMLIMIT, if set, wins)", EnvVars: env("memory-limit")},
			&cli.IntFlag{Name: "prefetch", Value: 8, Usage: "chunks each request fetches ahead of what it sends; more hides store latency (S3), costs memory", EnvVars: env("prefetch")},
		},
		Action: runServe,
	}
}

func runServe(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError("serve takes no arguments (got %q)", c.Args().Slice())
	}
	keys, err := trustedKeys(c)
	if err != nil {
		return err
	}
	st, err := chunkstore.Open(c.String("store"), nil)
	if err != nil {
		return usageError("--store: %v", err)
	}
	cacheSize, err := parseSize(c.String("chunk-cache-size"))
	if err != nil {
		return usageError("--chunk-cache-size: %v", err)
	}
	if cacheSize == 0 {
		cacheSize = -1
	}
	// Chunks evicted from the cache while requests still stream them become garbage at
	// the rate NARs are served; without a limit the heap may grow to several times the
	// cache before the collector catches up.
	memLimit := 2*max(cacheSize, 0) + 256<<20
	if c.IsSet("memory-limit") {
		if memLimit, err = parseSize(c.String("memory-limit")); err != nil || memLimit <= 0 {
			return usageError("--memory-limit %q: want a size such as 1GiB", c.String("memory-limit"))
		}
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memLimit)
	}
	if c.Int("max-active") < 1 || c.Int("prefetch") < 1 || durationOf(c, "queue-timeout") <= 0 {
		return usageError("--max-active and --prefetch must be at least 1, --queue-timeout positive")
	}
	if _, err := st.Meta(c.Context); err != nil {
		return err
	}
	s, err := origin.New(st, origin.Options{
		Keys: keys, MaxActive: c.Int("max-active"), QueueTimeout: durationOf(c, "queue-timeout"),
		ChunkCacheBytes: cacheSize, Prefetch: c.Int("prefetch"), Logger: slog.Default(),
	})
	if err != nil {
		return err
	}
	defer s.Close()
	ln, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return usageError("--listen: %v", err)
	}
	return s.Serve(c.Context, ln, 30*time.Second)
}
