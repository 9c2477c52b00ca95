// Command shoal is a deduplicating Nix substituter: `shoal daemon` serves Nix from chunks,
// `shoal publish` builds the chunk store from a binary cache.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/shoal-nix/shoal/internal/buildinfo"
	"github.com/urfave/cli/v2"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// helpWidth is where help text wraps: long flag descriptions otherwise run to 300
// columns.
const helpWidth = 100

func init() {
	// urfave/cli's documented hook for wrapping help text.
	cli.HelpPrinter = func(w io.Writer, templ string, data any) {
		cli.HelpPrinterCustom(w, templ, data, map[string]any{"wrapAt": func() int { return helpWidth }})
	}
}

// run is main without the process around it, so tests see what a user sees: the
// output, the error message and the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp()
	app.Writer, app.ErrWriter = stdout, stderr
	return exitStatus(stderr, app.RunContext(ctx, args))
}

// Exit statuses: 2 for a mistake in how shoal was invoked, 1 for everything else
// that failed.
const (
	exitFailure = 1
	exitUsage   = 2
)

// exitStatus prints err once and says how to exit.
func exitStatus(w io.Writer, err error) int {
	if err == nil {
		return 0
	}
	var ue *usageErr
	if errors.As(err, &ue) {
		prefix := "shoal"
		if ue.command != "" {
			prefix = ue.command
		}
		fmt.Fprintf(w, "%s: %s\n", prefix, ue.msg)
		if ue.command != "" {
			fmt.Fprintf(w, "Run '%s --help' for usage.\n", ue.command)
		}
		return exitUsage
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(w, msg)
		}
		return ec.ExitCode()
	}
	fmt.Fprintln(w, "shoal:", err)
	return exitFailure
}

func newApp() *cli.App {
	app := &cli.App{
		Name:    "shoal",
		Usage:   "a deduplicating, verifying Nix substituter",
		Version: buildinfo.Read().String(),
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
		Flags: []cli.Flag{logLevelFlag()},
		Before: func(c *cli.Context) error {
			return setLogLevel(c, "shoal")
		},
		Commands: []*cli.Command{daemonCommand(), publishCommand(), analyzeCommand(), storeCommand(), serveCommand(), statusCommand(), pinCommand(), unpinCommand(), gcCommand(), verifyCommand(), seedCommand(), idCommand()},
		// run decides how to exit, so the app can run inside tests.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return &usageErr{msg: flagError(err), command: "shoal"}
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return &usageErr{msg: fmt.Sprintf("unknown command %q", c.Args().First()), command: "shoal"}
			}
			return cli.ShowAppHelp(c)
		},
	}
	prepareCommands(app.Commands, "shoal")
	return app
}

// logLevelFlag is accepted before and after the subcommand, so that a service's
// extra arguments (`shoal daemon ... --log-level debug`) can set it.
func logLevelFlag() cli.Flag {
	return &cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: env("log-level")}
}

// setLogLevel installs the logger for the level the context's --log-level names.
func setLogLevel(c *cli.Context, command string) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return &usageErr{msg: fmt.Sprintf("--log-level %q: want debug, info, warn or error", c.String("log-level")), command: command}
	}
	w := c.App.ErrWriter
	if w == nil {
		w = os.Stderr
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})))
	return nil
}

// prepareCommands gives every command the same handling of mistakes: a flag error or
// a missing required flag is one line naming the flag as it is typed (--flag), a
// pointer to --help and exit status 2, not the whole help between two copies of the
// error. Leaf commands also take --log-level.
func prepareCommands(cmds []*cli.Command, parent string) {
	for _, cmd := range cmds {
		name := parent + " " + cmd.Name
		cmd.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
			return &usageErr{msg: flagError(err), command: name}
		}
		if len(cmd.Subcommands) > 0 {
			prepareCommands(cmd.Subcommands, name)
			if cmd.Action == nil {
				cmd.Action = func(c *cli.Context) error {
					if c.NArg() > 0 {
						return &usageErr{msg: fmt.Sprintf("unknown command %q", c.Args().First()), command: name}
					}
					return cli.ShowSubcommandHelp(c)
				}
			}
			continue
		}
		var required []string
		for _, f := range cmd.Flags {
			if sf, ok := f.(*cli.StringFlag); ok && sf.Required {
				// Checked below, to report it like every other usage error.
				sf.Required = false
				sf.Usage += " (required)"
				required = append(required, sf.Name)
			}
		}
		cmd.Flags = append(cmd.Flags, logLevelFlag())
		before, action := cmd.Before, cmd.Action
		cmd.Before = func(c *cli.Context) error {
			for _, r := range required {
				if !c.IsSet(r) {
					return &usageErr{msg: fmt.Sprintf("--%s is required", r), command: name}
				}
			}
			if c.IsSet("log-level") {
				if err := setLogLevel(c, name); err != nil {
					return err
				}
			}
			if before != nil {
				return before(c)
			}
			return nil
		}
		if action != nil {
			cmd.Action = func(c *cli.Context) error {
				err := action(c)
				var ue *usageErr
				if errors.As(err, &ue) && ue.command == "" {
					ue.command = name
				}
				return err
			}
		}
	}
}

// singleDash matches the flag package's "-name" in its error messages.
var singleDash = regexp.MustCompile(`(^|\s)-([a-z][a-z0-9-]*)`)

// flagError rewrites a flag parse error with flags spelled as users type them.
func flagError(err error) string {
	return singleDash.ReplaceAllString(err.Error(), "$1--$2")
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
	return &cli.StringFlag{Name: "state-dir", Value: defaultStateDir(), DefaultText: "$STATE_DIRECTORY, else $XDG_STATE_HOME/shoal",
		Usage: "the daemon's state directory: chunk cache, peer identity", EnvVars: env("state-dir")}
}

// usageErr is a mistake in how shoal was invoked: exit status 2, and a pointer to the
// command's --help.
type usageErr struct {
	msg     string
	command string // "shoal daemon"; filled in by prepareCommands when empty
}

func (e *usageErr) Error() string { return e.msg }

// usageError reports a mistake in the invocation.
func usageError(format string, a ...any) error {
	return &usageErr{msg: fmt.Sprintf(format, a...)}
}

var errInterrupted = errors.New("interrupted")
