package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/shoal-nix/shoal/internal/cachetest"
)

func TestEnv(t *testing.T) {
	for flag, want := range map[string]string{
		"store":              "SHOAL_STORE",
		"trusted-public-key": "SHOAL_TRUSTED_PUBLIC_KEY",
		"state-dir":          "SHOAL_STATE_DIR",
	} {
		if got := env(flag)[0]; got != want {
			t.Errorf("env(%q) = %q, want %q", flag, got, want)
		}
	}
}

// Every flag of every command must be settable from the environment.
func TestEveryFlagHasAnEnvVar(t *testing.T) {
	app := newApp()
	check := func(cmd string, names []string, envs []string) {
		if len(envs) != 1 || envs[0] != env(names[0])[0] {
			t.Errorf("%s --%s: environment variables %v, want %v", cmd, names[0], envs, env(names[0]))
		}
	}
	type withEnv interface{ GetEnvVars() []string }
	for _, f := range app.Flags {
		check("shoal", f.Names(), f.(withEnv).GetEnvVars())
	}
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			for _, f := range c.Flags {
				check(prefix+c.Name, f.Names(), f.(withEnv).GetEnvVars())
			}
			walk(prefix+c.Name+" ", c.Subcommands)
		}
	}
	walk("", app.Commands)
}

func TestServeAndRetireRefuseBadInvocations(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
	}{
		{"serve: bad key", []string{"serve", "--store", dir, "--trusted-public-key", "nonsense"}},
		{"serve: bad cache size", []string{"serve", "--store", dir, "--chunk-cache-size", "lots"}},
		{"serve: arguments", []string{"serve", "--store", dir, "extra"}},
		{"serve: no slots", []string{"serve", "--store", dir, "--max-active", "0"}},
		{"serve: not a store", []string{"serve", "--store", dir, "--listen", "127.0.0.1:0"}},
		{"retire: no rule", []string{"store", "retire", "--from", dir, "--store", dir}},
		{"retire: negative age", []string{"store", "retire", "--from", dir, "--store", dir, "--older-than", "-1h"}},
		{"retire: missing keep list", []string{"store", "retire", "--from", dir, "--store", dir, "--keep-narinfos-from", filepath.Join(dir, "absent")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := newApp().RunContext(context.Background(), append([]string{"shoal", "--log-level", "error"}, tc.args...)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestRetireCommandDryRun(t *testing.T) {
	cache := cachetest.New(t, "cli-1")
	ni := cache.Add(t, cachetest.HashPart("old"), "old-1.0", []byte(strings.Repeat("shoal ", 50000)), "zstd")
	storeDir := t.TempDir()
	t.Setenv("SHOAL_TRUSTED_PUBLIC_KEY", cache.PublicKey)
	var out strings.Builder
	run := func(args ...string) error {
		app := newApp()
		app.Writer = &out
		return app.RunContext(context.Background(), append([]string{"shoal", "--log-level", "warn"}, args...))
	}
	if err := run("publish", "--from", cache.Dir, "--to", storeDir, "--all"); err != nil {
		t.Fatal(err)
	}
	if err := run("store", "retire", "--from", cache.Dir, "--store", storeDir, "--older-than", "1ns"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "would retire (dry run; --apply deletes) 1 NAR files") {
		t.Errorf("dry run report:\n%s", out.String())
	}
	if _, err := os.Stat(filepath.Join(cache.Dir, ni.URL)); err != nil {
		t.Errorf("the dry run deleted the NAR: %v", err)
	}
}

func TestDefaultStateDir(t *testing.T) {
	tests := []struct {
		stateDirectory, xdg, want string
	}{
		{"/var/lib/shoal", "/x", "/var/lib/shoal"},
		{"/var/lib/shoal:/var/lib/other", "", "/var/lib/shoal"},
		{"", "/home/u/.state", "/home/u/.state/shoal"},
	}
	for _, tc := range tests {
		t.Setenv("STATE_DIRECTORY", tc.stateDirectory)
		t.Setenv("XDG_STATE_HOME", tc.xdg)
		if got := defaultStateDir(); got != tc.want {
			t.Errorf("STATE_DIRECTORY=%q XDG_STATE_HOME=%q: %q, want %q", tc.stateDirectory, tc.xdg, got, tc.want)
		}
	}
}

func TestPublishCommand(t *testing.T) {
	cache := cachetest.New(t, "cli-1")
	ni := cache.Add(t, cachetest.HashPart("cli"), "cli-1.0", []byte(strings.Repeat("shoal ", 50000)), "zstd")
	storeDir := t.TempDir()
	run := func(args ...string) error {
		return newApp().RunContext(context.Background(), append([]string{"shoal", "--log-level", "warn"}, args...))
	}

	if err := run("publish", "--from", cache.Dir, "--to", storeDir); err == nil {
		t.Error("publish without --all or paths succeeded")
	}
	if err := run("publish", "--from", cache.Dir, "--to", storeDir, "--all", "not a path"); err == nil {
		t.Error("publish with both --all and paths succeeded")
	}
	// The default key is cache.nixos.org's: this cache's narinfo is refused.
	if err := run("publish", "--from", cache.Dir, "--to", storeDir, "--all"); err == nil {
		t.Error("publish accepted a narinfo no trusted key signed")
	}
	// Flags from the environment.
	t.Setenv("SHOAL_TRUSTED_PUBLIC_KEY", cache.PublicKey)
	t.Setenv("SHOAL_FROM", "file://"+cache.Dir)
	if err := run("publish", "--to", storeDir, ni.StorePath); err != nil {
		t.Fatalf("publish: %v", err)
	}
	if _, err := os.Stat(filepath.Join(storeDir, ni.HashPart()+".narinfo")); err != nil {
		t.Errorf("narinfo not published: %v", err)
	}
}

func TestDaemonRefusesBadConfig(t *testing.T) {
	run := func(args ...string) error {
		return newApp().RunContext(context.Background(), append([]string{"shoal", "--log-level", "error", "daemon"}, args...))
	}
	tests := []struct {
		name string
		args []string
	}{
		{"bad key", []string{"--trusted-public-key", "nonsense", "--state-dir", t.TempDir()}},
		{"bad listen", []string{"--listen", "not-an-address", "--state-dir", t.TempDir(), "--upstream", t.TempDir()}},
		{"arguments", []string{"--state-dir", t.TempDir(), "extra"}},
		{"negative verify wait", []string{"--state-dir", t.TempDir(), "--upstream", t.TempDir(), "--listen", "127.0.0.1:0", "--verify-wait", "-1s"}},
		{"bad log level", []string{"--state-dir", t.TempDir()}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.name == "bad log level" {
				err := newApp().RunContext(context.Background(), append([]string{"shoal", "--log-level", "loud", "daemon"}, args...))
				if err == nil {
					t.Fatal("accepted --log-level loud")
				}
				return
			}
			err := run(args...)
			if err == nil {
				t.Fatal("daemon started")
			}
			if strings.Contains(strings.Join(args, " "), "--verify-wait") && !strings.Contains(err.Error(), "--verify-wait") {
				t.Fatalf("error %q does not name --verify-wait", err)
			}
		})
	}
}

// TestDaemonRefusesNegativeDeltaEncoders: 0 turns delta serving off, so a negative
// count is a mistake worth naming rather than a second way to say "off".
func TestDaemonRefusesNegativeDeltaEncoders(t *testing.T) {
	err := newApp().RunContext(context.Background(), []string{"shoal", "--log-level", "error", "daemon",
		"--state-dir", t.TempDir(), "--peer-delta-encoders", "-1"})
	if err == nil || !strings.Contains(err.Error(), "--peer-delta-encoders -1") {
		t.Fatalf("daemon --peer-delta-encoders -1: %v, want it refused by name", err)
	}
}

// publish writes a store only into an empty place or an existing store: not into
// the cache it reads, not into a directory holding other files.
func TestPublishRefusesADestinationThatIsNotAStore(t *testing.T) {
	cache := cachetest.New(t, "dest-1")
	cache.Add(t, cachetest.HashPart("dest"), "dest-1.0", []byte(strings.Repeat("shoal ", 50000)), "zstd")
	t.Setenv("SHOAL_TRUSTED_PUBLIC_KEY", cache.PublicKey)
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "notes.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, to, want string }{
		{"the source cache", cache.Dir, "is the cache being published"},
		{"a directory with other files", other, "is not a chunk store (it has no shoal-store.json) and not empty (it holds notes.txt)"},
	} {
		code, _, errOut := runCLI(t, "--log-level", "error", "publish", "--from", "file://"+cache.Dir, "--to", tc.to, "--all")
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%s: exit %d, %s", tc.name, code, errOut)
		}
		if _, err := os.Stat(filepath.Join(tc.to, "shoal-store.json")); err == nil {
			t.Errorf("%s: store files written", tc.name)
		}
	}
	// An empty directory becomes a store, and publishing to it again is fine.
	to := t.TempDir()
	for range 2 {
		if code, _, errOut := runCLI(t, "--log-level", "error", "publish", "--from", "file://"+cache.Dir, "--to", to, "--all"); code != 0 {
			t.Fatalf("publish to a new store: exit %d, %s", code, errOut)
		}
	}
}

// Off a terminal, publish says how far it got in NARs and bytes, not nothing.
func TestPublishProgressOffATerminal(t *testing.T) {
	cache := cachetest.New(t, "prog-1")
	cache.Add(t, cachetest.HashPart("prog-a"), "prog-a-1.0", []byte(strings.Repeat("a", 100000)), "zstd")
	cache.Add(t, cachetest.HashPart("prog-b"), "prog-b-1.0", []byte(strings.Repeat("b", 100000)), "zstd")
	code, _, errOut := runCLI(t, "--log-level", "error", "publish", "--from", "file://"+cache.Dir, "--to", t.TempDir(),
		"--trusted-public-key", cache.PublicKey, "--all")
	if code != 0 || !strings.Contains(errOut, "publishing: 2 of 2 NARs, 0.2 of 0.2 MB (100%)") {
		t.Errorf("exit %d, stderr:\n%s", code, errOut)
	}
}

// --delta-primary makes a packed store delta-primary, which it stays; the flags that
// contradict the store, or come without a packed store, are refused with the reason.
func TestPublishDeltaPrimaryFlags(t *testing.T) {
	cache := cachetest.New(t, "dp-1")
	cache.Add(t, cachetest.HashPart("dp-a"), "dp-1.0", []byte(strings.Repeat("delta primary ", 20000)), "zstd")
	t.Setenv("SHOAL_TRUSTED_PUBLIC_KEY", cache.PublicKey)
	publish := func(to string, flags ...string) (int, string) {
		code, _, errOut := runCLI(t, append([]string{"--log-level", "error", "publish", "--from", "file://" + cache.Dir, "--to", to, "--all"}, flags...)...)
		return code, errOut
	}
	dp := t.TempDir()
	if code, errOut := publish(dp, "--layout", "v3", "--delta-primary", "--max-chain", "3", "--keyframe-level", "better"); code != 0 || !strings.Contains(errOut, "delta-primary:") {
		t.Fatalf("publish to a new delta-primary store: exit %d, %s", code, errOut)
	}
	raw, err := os.ReadFile(filepath.Join(dp, "shoal-store.json"))
	if err != nil || !strings.Contains(string(raw), `"deltaPrimary": true`) || !strings.Contains(string(raw), `"maxChain": 3`) {
		t.Fatalf("shoal-store.json: %s, %v", raw, err)
	}
	plain := t.TempDir()
	if code, errOut := publish(plain, "--layout", "v3"); code != 0 {
		t.Fatalf("publish to a packed store: exit %d, %s", code, errOut)
	}
	for _, tc := range []struct {
		name  string
		to    string
		flags []string
		want  string
	}{
		{"a new store without v3", t.TempDir(), []string{"--delta-primary"}, "a delta-primary store is a packed one"},
		{"another bound", dp, []string{"--max-chain", "4"}, "chains of at most 3, not 4"},
		{"turned off", dp, []string{"--delta-primary=false"}, "is delta-primary, and stays so"},
		{"a bound for a plain store", plain, []string{"--max-chain", "2"}, "not delta-primary"},
		{"a keyframe level for a plain store", plain, []string{"--keyframe-level", "best"}, "not delta-primary"},
		{"an unknown level", dp, []string{"--keyframe-level", "max"}, "--keyframe-level"},
		{"a bound out of range", dp, []string{"--max-chain", "0"}, "--max-chain 0"},
	} {
		if code, errOut := publish(tc.to, tc.flags...); code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%s: exit %d, %s; want an error containing %q", tc.name, code, errOut, tc.want)
		}
	}
	// Without the flags, the store keeps its mode.
	if code, errOut := publish(dp); code != 0 {
		t.Fatalf("publish to a delta-primary store without the flag: exit %d, %s", code, errOut)
	}
}
