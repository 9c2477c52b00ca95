package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/internal/buildinfo"
	"github.com/urfave/cli/v2"
)

// runCLI runs shoal as main would and returns its exit status, stdout and stderr.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr strings.Builder
	// A command that should have refused to start but serves instead ends here.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := run(ctx, append([]string{"shoal"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-v"}} {
		code, out, errOut := runCLI(t, args...)
		want := "shoal version " + buildinfo.Read().String() + "\n"
		if code != 0 || out != want || errOut != "" {
			t.Errorf("shoal %s: exit %d, stdout %q, stderr %q; want exit 0 and %q", args, code, out, errOut, want)
		}
	}
}

// A mistake in the invocation is reported once, on stderr, with the flag spelled as
// typed and a pointer to --help; every such mistake exits 2.
func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string // the first line of stderr
	}{
		{"unknown flag", []string{"daemon", "--bogus"}, "shoal daemon: flag provided but not defined: --bogus"},
		{"bare number as a duration", []string{"daemon", "--verify-wait", "5"}, `shoal daemon: invalid value "5" for flag --verify-wait: duration "5": want a number and a unit (d, h, m, s, ms), e.g. 90d, 12h or 30s`},
		{"missing required flag", []string{"publish", "--to", dir, "--all"}, "shoal publish: --from is required"},
		{"missing required flag in a group", []string{"store", "verify"}, "shoal store verify: --store is required"},
		{"unknown command", []string{"frob"}, `shoal: unknown command "frob"`},
		{"unknown subcommand", []string{"store", "frob"}, `shoal store: unknown command "frob"`},
		{"check in the action", []string{"daemon", "--state-dir", dir, "--verify-wait", "-1s"}, "shoal daemon: --verify-wait -1s: want a duration of at least 0s"},
		{"bad log level", []string{"--log-level", "loud", "status"}, `shoal: --log-level "loud": want debug, info, warn or error`},
		{"retire: no rule", []string{"store", "retire", "--from", dir, "--store", dir}, "shoal store retire: store retire needs --older-than or --keep-narinfos-from: without either it would retire every NAR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tc.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			if out != "" {
				t.Errorf("stdout is not empty:\n%s", out)
			}
			lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
			if lines[0] != tc.want {
				t.Errorf("stderr starts %q, want %q", lines[0], tc.want)
			}
			if len(lines) != 2 || !strings.HasPrefix(lines[1], "Run '") || !strings.HasSuffix(lines[1], " --help' for usage.") {
				t.Errorf("stderr is not the error and a pointer to --help:\n%s", errOut)
			}
		})
	}
}

// Days work in every duration flag, as they did only in analyze logs.
func TestDurationFlagsTakeDays(t *testing.T) {
	dir := t.TempDir()
	code, _, errOut := runCLI(t, "store", "retire", "--from", dir, "--store", dir, "--older-than", "90d")
	if strings.Contains(errOut, "--older-than") || strings.Contains(errOut, "parse error") {
		t.Errorf("retire --older-than 90d: exit %d, %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "store", "gc", "--store", dir, "--keep-since", "30d", "--grace", "1d12h", "--dry-run")
	if strings.Contains(errOut, "--keep-since") || strings.Contains(errOut, "--grace") {
		t.Errorf("store gc --keep-since 30d --grace 1d12h: exit %d, %s", code, errOut)
	}
}

// --log-level goes after the subcommand too, where a service's extra arguments put
// it.
func TestLogLevelAfterSubcommand(t *testing.T) {
	code, _, errOut := runCLI(t, "status", "--state-dir", t.TempDir(), "--log-level", "loud")
	if code != exitUsage || !strings.Contains(errOut, `--log-level "loud"`) {
		t.Errorf("status --log-level loud: exit %d, %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "id", "--state-dir", t.TempDir(), "--log-level", "debug")
	if code != 0 {
		t.Errorf("id --log-level debug: exit %d, %s", code, errOut)
	}
}

// helpPages lists the argument lists that print every command's help.
func helpPages(app *cli.App) [][]string {
	pages := [][]string{{"--help"}}
	var walk func(prefix []string, cmds []*cli.Command)
	walk = func(prefix []string, cmds []*cli.Command) {
		for _, c := range cmds {
			if c.Name == "help" {
				continue
			}
			path := append(append([]string{}, prefix...), c.Name)
			pages = append(pages, append(append([]string{}, path...), "--help"))
			walk(path, c.Subcommands)
		}
	}
	walk(nil, app.Commands)
	return pages
}

// A flag's placeholder comes from the first `quoted` word of its usage: it must be
// an upper-case name, not words the usage meant as code.
func TestFlagPlaceholders(t *testing.T) {
	upper := regexp.MustCompile(`^[A-Z][A-Z0-9_:/]*$`)
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			for _, f := range c.Flags {
				df, ok := f.(cli.DocGenerationFlag)
				if !ok {
					continue
				}
				if name := placeholderOf(df.GetUsage()); name != "" && !upper.MatchString(name) {
					t.Errorf("%s%s --%s: placeholder %q", prefix, c.Name, f.Names()[0], name)
				}
			}
			walk(prefix+c.Name+" ", c.Subcommands)
		}
	}
	walk("shoal ", newApp().Commands)
}

func TestHelpIsReadable(t *testing.T) {
	pages := helpPages(newApp())
	if len(pages) < 15 {
		t.Fatalf("only %d help pages found", len(pages))
	}
	for _, args := range pages {
		code, out, errOut := runCLI(t, args...)
		if code != 0 || errOut != "" {
			t.Errorf("shoal %s: exit %d, %s", strings.Join(args, " "), code, errOut)
			continue
		}
		for _, line := range strings.Split(out, "\n") {
			if len(line) > helpWidth {
				t.Errorf("shoal %s: a line of %d columns: %s", strings.Join(args, " "), len(line), line)
			}
			if strings.Count(line, "(default:") > 1 {
				t.Errorf("shoal %s: two defaults in %s", strings.Join(args, " "), line)
			}
			if strings.Contains(line, "STORE-PATH") {
				t.Errorf("shoal %s: STORE-PATH, where the rest of the help says STORE_PATH: %s", strings.Join(args, " "), line)
			}
		}
	}
	_, out, _ := runCLI(t, "daemon", "--help")
	if !regexp.MustCompile(`--store[^\n]*s3://`).MatchString(strings.Join(strings.Fields(out), " ")) {
		t.Errorf("daemon --help: --store does not mention s3://:\n%s", out)
	}
}

// placeholderOf is how urfave/cli picks a flag's placeholder: the first `quoted` word.
func placeholderOf(usage string) string {
	_, rest, ok := strings.Cut(usage, "`")
	if !ok {
		return ""
	}
	name, _, ok := strings.Cut(rest, "`")
	if !ok {
		return ""
	}
	return name
}
