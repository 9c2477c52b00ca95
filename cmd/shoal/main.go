// Command shoal is a deduplicating Nix substituter: `shoal daemon` serves Nix from chunks,
// `shoal publish` builds the chunk store from a binary cache.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newApp().RunContext(ctx, os.Args); err != nil {
		code := 1
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			code = ec.ExitCode()
			fmt.Fprintln(os.Stderr, err)
		} else {
			fmt.Fprintln(os.Stderr, "shoal:", err)
		}
		os.Exit(code)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "shoal",
		Usage: "a deduplicating, verifying Nix substituter",
		Description: `shoal serves Nix store paths from content-defined chunks instead of whole NARs:
an upgrade downloads only the chunks that changed. Every NAR is checked against the
NarHash and NarSize of a narinfo signed by a key you trust before Nix sees a byte.

  shoal daemon                    serve Nix on 127.0.0.1:37515 (add it to substituters)
  shoal publish --from URL --to DIR --all
                                  build a chunk store from a binary cache
  shoal serve --store URL         answer a cache's NAR URLs from the store, behind a CDN,
                                  for NARs shoal store retire deleted from the cache

Every flag can also be set through the environment as SHOAL_<FLAG>, e.g.
SHOAL_STORE=https://chunks.example.org for --store.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: env("log-level")},
		},
		Before: func(c *cli.Context) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
			return nil
		},
		Commands: []*cli.Command{daemonCommand(), publishCommand(), analyzeCommand(), storeCommand(), serveCommand(), statusCommand(), pinCommand(), unpinCommand(), gcCommand(), verifyCommand(), seedCommand(), idCommand()},
		// main decides how to exit, so the app can run inside tests.
		ExitErrHandler: func(*cli.Context, error) {},
	}
}

// env names the environment variable of a flag: --trusted-public-key is
// SHOAL_TRUSTED_PUBLIC_KEY.
func env(flag string) []string {
	return []string{"SHOAL_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))}
}

// defaultStateDir follows systemd's StateDirectory= when it is set, else the XDG base
// directory spec, so the daemon needs no configuration to start.
func defaultStateDir() string {
	if d := os.Getenv("STATE_DIRECTORY"); d != "" {
		first, _, _ := strings.Cut(d, ":")
		return first
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "shoal")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "shoal")
	}
	return ""
}

// stateDirFlag is --state-dir, shared by every command that touches the daemon's
// state: its chunk cache, peer identity and DHT records.
func stateDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "state-dir", Value: defaultStateDir(), Usage: "the daemon's state directory: chunk cache, peer identity (default: $STATE_DIRECTORY, else $XDG_STATE_HOME/shoal)", EnvVars: env("state-dir")}
}

// usageError marks errors that come from how shoal was invoked.
func usageError(format string, a ...any) error {
	return cli.Exit(fmt.Sprintf("shoal: "+format, a...), 2)
}

var errInterrupted = errors.New("interrupted")
