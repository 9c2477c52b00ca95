package main

import (
	"fmt"
	"path/filepath"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/nixstore"
	"github.com/urfave/cli/v2"
)

func seedCommand() *cli.Command {
	return &cli.Command{
		Name:      "seed",
		Usage:     "index the chunks of valid local store paths, so upgrades of them download only what changed",
		ArgsUsage: "STORE_PATH...",
		Description: `Each path is serialized as a NAR, checked against the hash Nix registered for it, and
cut into chunks whose locations (not bytes) go into the cache. The daemon does this by
itself for installed versions of a package whose NAR it is asked for; seed does it ahead
of time, for example for a system's closure before an upgrade.`,
		Flags: []cli.Flag{stateDirFlag(), daemonAddrFlag(),
			&cli.BoolFlag{Name: "closure", Usage: "seed each path's whole closure (nix-store --query --requisites)", EnvVars: env("closure")}},
		Action: func(c *cli.Context) error {
			paths, err := pathArgs(c)
			if err != nil {
				return err
			}
			var reply daemon.SeedReply
			err = withCache(c, func(lc *localcache.Cache) error {
				s, err := nixstore.New(lc, chunk.DefaultParams(), nixstore.Options{Dir: filepath.Dir(paths[0])})
				if err != nil {
					return err
				}
				reply = daemon.SeedPaths(c.Context, s, paths)
				return nil
			}, func(addr string) error {
				return adminCall(c.Context, c.String("state-dir"), addr, "seed", daemon.SeedRequest{Paths: paths}, &reply)
			})
			if err != nil {
				return err
			}
			failed := 0
			for _, r := range reply.Results {
				switch {
				case r.Error != "":
					failed++
					fmt.Fprintf(c.App.ErrWriter, "%s: %s\n", r.Path, r.Error)
				case r.Indexed:
					fmt.Fprintf(c.App.Writer, "%s: indexed %d chunks of a %d-byte NAR\n", r.Path, r.Chunks, r.NarSize)
				default:
					fmt.Fprintf(c.App.Writer, "%s: already indexed\n", r.Path)
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d paths not seeded", failed, len(reply.Results))
			}
			return nil
		},
	}
}
