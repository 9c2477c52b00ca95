package main

import (
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"

	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/p2p"
	"github.com/urfave/cli/v2"
)

func daemonCommand() *cli.Command {
	return &cli.Command{
		Name:  "daemon",
		Usage: "serve a Nix binary cache on loopback, assembled from deduplicated chunks",
		Description: `The daemon answers Nix's binary-cache protocol. For each store path it finds a
narinfo signed by a trusted key (in the chunk store, else the upstream caches in order),
and serves the NAR from its local chunk cache, the chunk store, or the whole NAR from
the upstream, whichever costs fewer bytes, verifying it before sending.

Point Nix at it (nix.conf), keeping cache.nixos.org as a fallback:
  substituters = http://127.0.0.1:37515 https://cache.nixos.org

Without --store the daemon fetches whole NARs from the upstream and keeps their chunks,
so later versions can reuse them.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:37515", Usage: "address to serve Nix on", EnvVars: env("listen")},
			&cli.StringFlag{Name: "store", Usage: "chunk store written by shoal publish (a directory, file://, http(s)://, s3://bucket/prefix?region=&endpoint=)", EnvVars: env("store")},
			&cli.StringSliceFlag{Name: "upstream", Value: cli.NewStringSlice(nixcache.DefaultUpstream), Usage: "plain binary cache for narinfos and whole NARs, in order (repeatable)", EnvVars: env("upstream")},
			&cli.StringSliceFlag{Name: "trusted-public-key", Value: cli.NewStringSlice(nixcache.DefaultTrustedKey), Usage: "accept narinfos signed by this key, `NAME:BASE64` (repeatable)", EnvVars: env("trusted-public-key")},
			stateDirFlag(),
			&cli.IntFlag{Name: "priority", Value: daemon.DefaultPriority, Usage: "Priority in nix-cache-info: lower wins, 0 is the highest (cache.nixos.org says 40)", EnvVars: env("priority")},
			&cli.StringFlag{Name: "cache-size", Usage: "bound the state directory's cache to this size, e.g. 20GiB; least recently used unpinned chunks are evicted (default: 10% of the file system holding --state-dir; 0: no bound)", EnvVars: env("cache-size")},
			&cli.StringFlag{Name: "seed-store", Value: "/nix/store", Usage: "Nix store whose valid paths lend chunks to upgrades of the same package (\"\" turns this off)", EnvVars: env("seed-store")},
			&cli.IntFlag{Name: "seed-related", Value: 3, Usage: "installed versions of a package to index when one of its NARs is requested, highest first (0: only paths given to shoal seed); each costs one read of the path", EnvVars: env("seed-related")},
			&cli.StringSliceFlag{Name: "pin-closure-of", Usage: "keep the closure of this store path pinned, refreshed hourly, e.g. /run/current-system (repeatable)", EnvVars: env("pin-closure-of")},
			&cli.BoolFlag{Name: "lan", Usage: "share chunks with shoal daemons on the LAN: find them with mDNS, fetch from them before the store, serve them verified NARs", EnvVars: env("lan")},
			&cli.StringSliceFlag{Name: "peer-listen", Usage: "libp2p `MULTIADDR` to listen on for LAN peers (repeatable; default: TCP and QUIC on port 37516, TCP only with --fleet-key)", EnvVars: env("peer-listen")},
			&cli.StringFlag{Name: "fleet-key", Usage: "pre-shared key `FILE`: only daemons holding the same key can connect (TCP only); make one with\n\t" + p2p.FleetKeyHelp, EnvVars: env("fleet-key")},
			&cli.StringFlag{Name: "peer-upload-limit", Usage: "bound what is sent to LAN peers, in bytes per second, e.g. 20MiB (default: no bound)", EnvVars: env("peer-upload-limit")},
			&cli.IntFlag{Name: "peer-delta-encoders", Value: p2p.DefaultDeltaEncoders, Usage: "deltas computed at once for peers upgrading a package whose old and new chunks this daemon holds, a few ms of one core each; requests beyond are answered busy and peers fetch whole chunks (0: serve no deltas)", EnvVars: env("peer-delta-encoders")},
			&cli.BoolFlag{Name: "dht", Usage: "find peers beyond the LAN through shoal's own kad-DHT (protocol /shoal/kad/1.0.0): announce the NARs this daemon verified, look up who holds a NAR before the store; joins only through --bootstrap-peer, never public peers", EnvVars: env("dht")},
			&cli.StringSliceFlag{Name: "bootstrap-peer", Usage: "join the DHT through this daemon, `MULTIADDR` ending in /p2p/<peer id> (repeatable; shoal id prints a daemon's peer ID)", EnvVars: env("bootstrap-peer")},
			&cli.StringFlag{Name: "dht-mode", Value: "server", Usage: "server: answer DHT queries and hold records for others (fleet nodes); client: only ask; auto: server only once reachable from the internet, so never among nodes of one private network", EnvVars: env("dht-mode")},
			&cli.IntFlag{Name: "dht-announce-max", Value: p2p.DefaultAnnounceMax, Usage: "announce at most this many NARs on the DHT, most recently used first; each costs a lookup and ~20 connections every 22h", EnvVars: env("dht-announce-max")},
			durationFlag("verify-wait", 0, "how long Nix may wait for a NAR to be verified before shoal streams it with the end held back; 0s streams at once, so Nix writes the path while the rest is fetched (a NAR that then fails breaks the transfer, and Nix retries)"),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError("daemon takes no arguments (got %q)", c.Args().Slice())
			}
			var cacheSize int64
			var err error
			if c.IsSet("cache-size") {
				if cacheSize, err = parseSize(c.String("cache-size")); err != nil {
					return usageError("--cache-size: %v", err)
				}
			} else if cacheSize, err = localcache.DefaultBudget(c.String("state-dir")); err != nil {
				return err
			}
			if cacheSize > 0 && cacheSize < 16<<20 {
				return usageError("--cache-size %s is below the 16 MiB minimum", c.String("cache-size"))
			}
			if durationOf(c, "verify-wait") < 0 {
				return usageError("--verify-wait %s: want a duration of at least 0s", durationOf(c, "verify-wait"))
			}
			if _, err := trustedKeys(c); err != nil {
				return err
			}
			if c.Int("priority") < 0 {
				return usageError("--priority %d: want 0 (highest) or more", c.Int("priority"))
			}
			if !slices.Contains(p2p.DHTModes, c.String("dht-mode")) {
				return usageError("--dht-mode %q: want one of %s", c.String("dht-mode"), strings.Join(p2p.DHTModes, ", "))
			}
			if c.Int("dht-announce-max") < 1 {
				return usageError("--dht-announce-max %d: want at least 1", c.Int("dht-announce-max"))
			}
			if _, err := p2p.ParseBootstrap(c.StringSlice("bootstrap-peer")); err != nil {
				return usageError("--bootstrap-peer: %v", err)
			}
			if c.Int("peer-delta-encoders") < 0 {
				return usageError("--peer-delta-encoders %d: want 0 (none) or more", c.Int("peer-delta-encoders"))
			}
			deltaEncoders := c.Int("peer-delta-encoders")
			if deltaEncoders == 0 {
				deltaEncoders = -1 // p2p's "off"; its 0 means the default
			}
			var uploadLimit int64
			if c.IsSet("peer-upload-limit") {
				if uploadLimit, err = parseSize(c.String("peer-upload-limit")); err != nil {
					return usageError("--peer-upload-limit: %v", err)
				}
			}
			verifyWait := durationOf(c, "verify-wait")
			if verifyWait == 0 {
				verifyWait = daemon.StreamAtOnce // the Config's zero is its default
			}
			cfg := daemon.Config{
				Listen:       c.String("listen"),
				StoreURL:     c.String("store"),
				Upstreams:    c.StringSlice("upstream"),
				TrustedKeys:  c.StringSlice("trusted-public-key"),
				StateDir:     c.String("state-dir"),
				Priority:     c.Int("priority"),
				VerifyWait:   verifyWait,
				CacheSize:    cacheSize,
				PinClosureOf: c.StringSlice("pin-closure-of"),
				SeedStore:    c.String("seed-store"),
				SeedRelated:  c.Int("seed-related"),
				Logger:       slog.Default(),

				LAN:             c.Bool("lan"),
				PeerListen:      c.StringSlice("peer-listen"),
				FleetKeyFile:    c.String("fleet-key"),
				PeerUploadLimit: uploadLimit,
				DHT:             c.Bool("dht"),
				DHTMode:         c.String("dht-mode"),
				BootstrapPeers:  c.StringSlice("bootstrap-peer"),
				AnnounceMax:     c.Int("dht-announce-max"),

				PeerDeltaEncoders: deltaEncoders,
			}
			d, err := daemon.New(cfg)
			if err != nil {
				return err
			}
			defer d.Close()
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return fmt.Errorf("listening on %s: %w", cfg.Listen, err)
			}
			return d.Serve(c.Context, ln)
		},
	}
}
