package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/urfave/cli/v2"
)

// The flags of subcommands (analyze dedup) must be settable from the
// environment too.
func TestSubcommandFlagsHaveEnvVars(t *testing.T) {
	type withEnv interface{ GetEnvVars() []string }
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			for _, f := range c.Flags {
				if envs := f.(withEnv).GetEnvVars(); len(envs) != 1 || envs[0] != env(f.Names()[0])[0] {
					t.Errorf("%s %s --%s: environment variables %v, want %v", path, c.Name, f.Names()[0], envs, env(f.Names()[0]))
				}
			}
			walk(path+" "+c.Name, c.Subcommands)
		}
	}
	walk("shoal", newApp().Commands)
}

// testNAR serializes a directory with one file, as Nix would.
func testNAR(t *testing.T, body string) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := nar.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []*nar.Header{{Path: "/", Type: nar.TypeDirectory}, {Path: "/data", Type: nar.TypeRegular, Size: int64(len(body))}} {
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := io.WriteString(w, body); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestAnalyzeDedupCommand(t *testing.T) {
	cache := cachetest.New(t, "analyze-1")
	base := strings.Repeat("the same bytes in both versions ", 4000)
	cache.Add(t, cachetest.HashPart("v2"), "pkg-2", testNAR(t, base+"version two"), "zstd")
	cache.Add(t, cachetest.HashPart("v1"), "pkg-1", testNAR(t, base+"version one"), "none")
	out := t.TempDir()
	run := func(args ...string) (string, error) {
		app := newApp()
		var stdout bytes.Buffer
		app.Writer = &stdout
		err := app.RunContext(context.Background(), append([]string{"shoal", "--log-level", "warn", "analyze", "dedup"}, args...))
		return stdout.String(), err
	}
	common := []string{"--from", cache.Dir, "--sweep", "256/1k/4k", "--sweep", "1k/4k/16k", "--level", "fastest", "--level", "default", "--deltas=false"}

	refusals := map[string][]string{
		"neither --all nor paths": common,
		"untrusted narinfos":      append(common, "--all"), // the default key is cache.nixos.org's
		"bad sweep":               {"--from", cache.Dir, "--trusted-public-key", cache.PublicKey, "--sweep", "1k/3k/16k", "--all"},
		"unknown strategy":        {"--from", cache.Dir, "--trusted-public-key", cache.PublicKey, "--strategy", "blocks", "--all"},
		"plot level not measured": append(common, "--trusted-public-key", cache.PublicKey, "--plot-level", "best", "--all"),
		"--all without --from":    {"--all"},
	}
	for name, args := range refusals {
		if _, err := run(args...); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}

	t.Setenv("SHOAL_TRUSTED_PUBLIC_KEY", cache.PublicKey)
	table, err := run(append(common, "--all", "--out", out)...)
	if err != nil {
		t.Fatal(err)
	}
	// Two strategies times two sizes, after a title and a header.
	if lines := strings.Split(strings.TrimSpace(table), "\n"); len(lines) != 6 || !strings.HasPrefix(lines[0], "2 NARs") {
		t.Errorf("table:\n%s", table)
	}
	f, err := os.Open(filepath.Join(out, "nars.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	// --all orders by name: pkg-1 first, although its hash sorts after pkg-2's.
	if len(rows) != 1+4*2*2 || !strings.HasSuffix(rows[1][6], "-pkg-1") || !strings.HasSuffix(rows[2][6], "-pkg-2") {
		t.Errorf("nars.csv: %d rows, first NARs %q, %q", len(rows), rows[1][6], rows[2][6])
	}
	svg, err := os.ReadFile(filepath.Join(out, "dedup.svg"))
	if err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(svg, new(struct{})); err != nil {
		t.Errorf("dedup.svg: %v", err)
	}
	for _, name := range []string{"summary.csv", "sizes.csv"} {
		if _, err := os.Stat(filepath.Join(out, name)); err != nil {
			t.Error(err)
		}
	}
}

// analyze dedup prices deltas by default, as publish writes them, and says how far it
// got off a terminal, through both of its phases.
func TestAnalyzeDedupDefaultsAndProgress(t *testing.T) {
	cache := cachetest.New(t, "analyze-2")
	base := strings.Repeat("the same bytes in both versions ", 4000)
	cache.Add(t, cachetest.HashPart("v1"), "pkg-1", testNAR(t, base+"version one"), "zstd")
	cache.Add(t, cachetest.HashPart("v2"), "pkg-2", testNAR(t, base+"version two"), "zstd")
	code, out, errOut := runCLI(t, "--log-level", "warn", "analyze", "dedup", "--from", cache.Dir, "--trusted-public-key", cache.PublicKey,
		"--sweep", "1k/4k/16k", "--level", "default", "--all")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"reading: 2 of 2 NARs", "measuring deltas: 1 of 1 upgrades"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if !strings.Contains(strings.ToLower(out), "delta") {
		t.Errorf("the table has no deltas:\n%s", out)
	}
}
