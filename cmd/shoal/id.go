package main

import (
	"fmt"
	"os"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/shoal-nix/shoal/p2p"
	"github.com/urfave/cli/v2"
)

// idCommand prints the daemon's peer ID, so bootstrap lists (--bootstrap-peer) can be
// written before any daemon runs.
func idCommand() *cli.Command {
	return &cli.Command{
		Name:  "id",
		Usage: "print the daemon's libp2p peer ID, creating its identity in the state directory if there is none",
		Flags: []cli.Flag{
			stateDirFlag(),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError("id takes no arguments (got %q)", c.Args().Slice())
			}
			dir := c.String("state-dir")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return fmt.Errorf("creating the state directory: %w", err)
			}
			key, err := p2p.LoadIdentity(dir)
			if err != nil {
				return err
			}
			id, err := peer.IDFromPrivateKey(key)
			if err != nil {
				return fmt.Errorf("deriving the peer ID: %w", err)
			}
			_, err = fmt.Fprintln(c.App.Writer, id)
			return err
		},
	}
}
