package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/internal/nixtest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/urfave/cli/v2"
)

// The NixOS module (nixos-module/) builds the daemon's command line in daemon-args.nix,
// plain Nix that evaluates without nixpkgs. These tests evaluate it with a real Nix for
// each option and parse the result with the daemon command's own flags, so a renamed or
// missing flag fails here rather than on someone's machine at boot.

const moduleDir = "../../nixos-module"

// fleetKeyPath stands in for the "%d/fleet-key" the module passes.
const fleetKeyPath = "/run/credentials/shoal.service/fleet-key"

// pendingFlags are flags the module can pass that other issues add to the daemon. While
// the CLI lacks one, cases that use it are logged and not parsed; the moment it lands,
// they are checked like every other. The module passes them only for options set away
// from their defaults, which TestModuleDefaultsUseOnlyExistingFlags holds it to.
var pendingFlags = map[string]string{
	"lan":            "issue 3 (LAN sharing)",
	"peer-listen":    "issue 3 (LAN sharing)",
	"fleet-key":      "issue 3 (LAN sharing)",
	"dht":            "issue 7 (DHT)",
	"dht-mode":       "issue 7 (DHT)",
	"bootstrap-peer": "issue 7 (DHT)",
}

// optionsWithoutFlags are module options that configure the service, not the daemon.
var optionsWithoutFlags = []string{"enable", "package", "openFirewall", "environmentFile"}

// baseArgs is the command line of a configuration with every option at its default.
func baseArgs(extra ...string) []string {
	return append([]string{
		"--listen", "127.0.0.1:37515",
		"--priority", "30",
		"--upstream", nixcache.DefaultUpstream,
		"--trusted-public-key", nixcache.DefaultTrustedKey,
	}, extra...)
}

// moduleCases maps each option of services.shoal that configures the daemon to the
// command line it must produce. overrides is merged over nixos-module/defaults.nix.
var moduleCases = []struct {
	option    string
	overrides string
	want      []string
}{
	{"(defaults)", `{}`, baseArgs()},
	{"listenAddress", `{"listenAddress": "::1"}`, []string{
		"--listen", "[::1]:37515", "--priority", "30",
		"--upstream", nixcache.DefaultUpstream, "--trusted-public-key", nixcache.DefaultTrustedKey,
	}},
	{"port", `{"port": 4000}`, []string{
		"--listen", "127.0.0.1:4000", "--priority", "30",
		"--upstream", nixcache.DefaultUpstream, "--trusted-public-key", nixcache.DefaultTrustedKey,
	}},
	{"priority", `{"priority": 20}`, []string{
		"--listen", "127.0.0.1:37515", "--priority", "20",
		"--upstream", nixcache.DefaultUpstream, "--trusted-public-key", nixcache.DefaultTrustedKey,
	}},
	{"store", `{"store": "https://chunks.example.org/a%20b"}`, []string{
		"--listen", "127.0.0.1:37515", "--priority", "30", "--store", "https://chunks.example.org/a%20b",
		"--upstream", nixcache.DefaultUpstream, "--trusted-public-key", nixcache.DefaultTrustedKey,
	}},
	{"upstreams", `{"upstreams": ["https://a.example.org", "file:///srv/cache"]}`, []string{
		"--listen", "127.0.0.1:37515", "--priority", "30",
		"--upstream", "https://a.example.org", "--upstream", "file:///srv/cache",
		"--trusted-public-key", nixcache.DefaultTrustedKey,
	}},
	{"trustedPublicKeys", `{"trustedPublicKeys": ["a-1:AAAA", "b-1:BBBB"]}`, []string{
		"--listen", "127.0.0.1:37515", "--priority", "30", "--upstream", nixcache.DefaultUpstream,
		"--trusted-public-key", "a-1:AAAA", "--trusted-public-key", "b-1:BBBB",
	}},
	{"extraArgs", `{"extraArgs": ["--verify-wait", "30s"]}`, baseArgs("--verify-wait", "30s")},
	{"logLevel", `{"logLevel": "debug"}`, baseArgs("--log-level", "debug")},
	{"cacheSize", `{"cacheSize": "20GiB"}`, baseArgs("--cache-size", "20GiB")},
	{"pinClosureOf", `{"pinClosureOf": ["/run/current-system", "/nix/var/nix/profiles/default"]}`,
		baseArgs("--pin-closure-of", "/run/current-system", "--pin-closure-of", "/nix/var/nix/profiles/default")},
	{"lan.enable", `{"lan": {"enable": true}}`, baseArgs("--lan")},
	{"peerPort", `{"lan": {"enable": true}, "peerPort": 4001}`, baseArgs("--lan",
		"--peer-listen", "/ip4/0.0.0.0/tcp/4001", "--peer-listen", "/ip6/::/tcp/4001",
		"--peer-listen", "/ip4/0.0.0.0/udp/4001/quic-v1", "--peer-listen", "/ip6/::/udp/4001/quic-v1")},
	// Without LAN or DHT there are no peers, and the module asserts against the setting.
	{"peerPort", `{"peerPort": 4001}`, baseArgs()},
	// libp2p's private networks have no QUIC: with a fleet key, TCP only.
	{"fleetKeyFile", `{"lan": {"enable": true}, "peerPort": 4001, "fleetKeyFile": "/run/secrets/fleet"}`, baseArgs("--lan",
		"--peer-listen", "/ip4/0.0.0.0/tcp/4001", "--peer-listen", "/ip6/::/tcp/4001",
		"--fleet-key", fleetKeyPath)},
	{"fleetKeyFile", `{"dht": {"enable": true}, "fleetKeyFile": "/run/secrets/fleet"}`, baseArgs("--dht", "--fleet-key", fleetKeyPath)},
	{"dht.enable", `{"dht": {"enable": true}}`, baseArgs("--dht")},
	{"dht.mode", `{"dht": {"enable": true, "mode": "server"}}`, baseArgs("--dht", "--dht-mode", "server")},
	{"dht.bootstrapPeers", `{"dht": {"enable": true, "bootstrapPeers": ["/ip4/192.0.2.1/tcp/37516/p2p/12D3KooWA", "/dns4/b.example.org/tcp/37516/p2p/12D3KooWB"]}}`,
		baseArgs("--dht", "--bootstrap-peer", "/ip4/192.0.2.1/tcp/37516/p2p/12D3KooWA", "--bootstrap-peer", "/dns4/b.example.org/tcp/37516/p2p/12D3KooWB")},
}

// evalNix evaluates expr (a function of overridesJSON and fleetKeyPath) in the module's
// directory with a real Nix and decodes the JSON result into out.
func evalNix(t *testing.T, env *nixtest.Env, expr, overrides string, out any) {
	t.Helper()
	dir, err := filepath.Abs(moduleDir)
	if err != nil {
		t.Fatal(err)
	}
	res, err := env.Run(context.Background(), "nix-instantiate", "--eval", "--strict", "--json",
		"--argstr", "dir", dir, "--argstr", "overridesJSON", overrides, "--argstr", "fleetKeyPath", fleetKeyPath,
		"--expr", expr)
	if err != nil {
		t.Fatalf("evaluating the module's command line: %v", err)
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(res)), out); err != nil {
		t.Fatalf("decoding %q: %v", res, err)
	}
}

// argsExpr is daemon-args.nix for defaults.nix with overrides merged in (recursively,
// as the module system merges options). Each value it escapes is marked <...>, so the
// test can tell that every value from the configuration reaches systemd escaped.
const argsExpr = `{ dir, overridesJSON, fleetKeyPath }:
let
  defaults = import (dir + "/defaults.nix");
  update = a: b: a // builtins.mapAttrs
    (n: v: if builtins.isAttrs v && builtins.isAttrs (a.${n} or null) then update a.${n} v else v) b;
in import (dir + "/daemon-args.nix") {
  cfg = update defaults (builtins.fromJSON overridesJSON);
  inherit defaults fleetKeyPath;
  escape = s: "<" + s + ">";
}`

// daemonFlags returns the daemon command and a flag set that parses its command line
// the way the CLI does.
func daemonFlags(t *testing.T) (*cli.Command, *flag.FlagSet) {
	t.Helper()
	for _, c := range newApp().Commands {
		if c.Name != "daemon" {
			continue
		}
		fs := flag.NewFlagSet("daemon", flag.ContinueOnError)
		for _, f := range c.Flags {
			if err := f.Apply(fs); err != nil {
				t.Fatalf("applying --%s: %v", f.Names()[0], err)
			}
		}
		return c, fs
	}
	t.Fatal("no daemon command")
	return nil, nil
}

// unescape strips the <...> marks, failing for any word that should have been escaped.
func unescape(t *testing.T, words []string) []string {
	t.Helper()
	var out []string
	for _, w := range words {
		switch {
		case strings.HasPrefix(w, "<") && strings.HasSuffix(w, ">"):
			out = append(out, w[1:len(w)-1])
		case strings.HasPrefix(w, "--") || w == fleetKeyPath:
			out = append(out, w) // flag names and the credential path are the module's own
		default:
			t.Errorf("%q reaches ExecStart= unescaped", w)
			out = append(out, w)
		}
	}
	return out
}

// flagNames lists the --flags of a command line, in order, without repeats.
func flagNames(args []string) []string {
	var names []string
	for _, a := range args {
		if name, ok := strings.CutPrefix(a, "--"); ok && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

func TestModuleCommandLine(t *testing.T) {
	env := nixtest.NewEnv(t)
	cmd, _ := daemonFlags(t)
	for _, tc := range moduleCases {
		t.Run(tc.option, func(t *testing.T) {
			var words []string
			evalNix(t, env, argsExpr, tc.overrides, &words)
			got := unescape(t, words)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("services.shoal with %s:\n got %q\nwant %q", tc.overrides, got, tc.want)
			}
			for _, name := range flagNames(got) {
				if hasFlag(cmd, name) {
					continue
				}
				if issue, ok := pendingFlags[name]; ok {
					t.Logf("not parsed: shoal daemon has no --%s yet; %s adds it", name, issue)
					return
				}
				t.Fatalf("the module passes --%s, which shoal daemon doesn't have", name)
			}
			_, fs := daemonFlags(t)
			if err := fs.Parse(got); err != nil {
				t.Fatalf("shoal daemon refuses the module's command line %q: %v", got, err)
			}
			if fs.NArg() != 0 {
				t.Fatalf("shoal daemon would take %q as arguments", fs.Args())
			}
		})
	}
}

func hasFlag(cmd *cli.Command, name string) bool {
	for _, f := range cmd.Flags {
		if slices.Contains(f.Names(), name) {
			return true
		}
	}
	return false
}

// A configuration that asks for no feature must start on today's daemon: with every
// option at its default, only flags the CLI has are passed.
func TestModuleDefaultsUseOnlyExistingFlags(t *testing.T) {
	env := nixtest.NewEnv(t)
	cmd, _ := daemonFlags(t)
	var words []string
	evalNix(t, env, argsExpr, `{}`, &words)
	for _, name := range flagNames(unescape(t, words)) {
		if !hasFlag(cmd, name) {
			t.Errorf("with every option at its default the module passes --%s, which shoal daemon doesn't have", name)
		}
	}
}

// Every flag daemon-args.nix can pass, and every option default.nix declares, is
// covered by moduleCases (or is an option of the service rather than the daemon).
func TestModuleCasesCoverModule(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(moduleDir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	tested := map[string]bool{}
	options := map[string]bool{}
	for _, tc := range moduleCases {
		for _, name := range flagNames(tc.want) {
			tested[name] = true
		}
		parts := strings.Split(tc.option, ".")
		options[parts[len(parts)-1]] = true
	}
	for _, o := range optionsWithoutFlags {
		options[o] = true
	}

	flagRE := regexp.MustCompile(`\b(?:switch|flag|flags|rawFlag) "([a-z0-9-]+)"`)
	found := flagRE.FindAllStringSubmatch(read("daemon-args.nix"), -1)
	if len(found) == 0 {
		t.Fatal("found no flags in daemon-args.nix: has the way it names flags changed?")
	}
	for _, m := range found {
		if !tested[m[1]] {
			t.Errorf("daemon-args.nix can pass --%s, but no case in moduleCases expects it", m[1])
		}
	}

	optionRE := regexp.MustCompile(`(?m)^\s*([A-Za-z]+) = mk(?:Option|EnableOption) `)
	declared := optionRE.FindAllStringSubmatch(read("default.nix"), -1)
	if len(declared) == 0 {
		t.Fatal("found no options in default.nix: has the way it declares them changed?")
	}
	var names []string
	for _, m := range declared {
		names = append(names, m[1])
		if !options[m[1]] {
			t.Errorf("default.nix declares option %q, which no case in moduleCases covers", m[1])
		}
	}
	sort.Strings(names)
	t.Logf("options in default.nix: %s", strings.Join(names, " "))
}

// defaults.nix is also what the module's defaults are: they must be the daemon's own,
// so that the daemon behaves the same with and without the module.
func TestModuleDefaultsMatchDaemon(t *testing.T) {
	env := nixtest.NewEnv(t)
	var d struct {
		ListenAddress     string   `json:"listenAddress"`
		Port              int      `json:"port"`
		Priority          int      `json:"priority"`
		Upstreams         []string `json:"upstreams"`
		TrustedPublicKeys []string `json:"trustedPublicKeys"`
	}
	evalNix(t, env, `{ dir, ... }: import (dir + "/defaults.nix")`, `{}`, &d)
	_, fs := daemonFlags(t)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	checks := []struct{ what, module, daemon string }{
		{"listen address", fmt.Sprintf("%s:%d", d.ListenAddress, d.Port), fs.Lookup("listen").Value.String()},
		{"priority", fmt.Sprint(d.Priority), fs.Lookup("priority").Value.String()},
		{"upstreams", strings.Join(d.Upstreams, " "), nixcache.DefaultUpstream},
		{"trusted public keys", strings.Join(d.TrustedPublicKeys, " "), nixcache.DefaultTrustedKey},
	}
	for _, c := range checks {
		if c.module != c.daemon {
			t.Errorf("%s: module default %q, daemon default %q", c.what, c.module, c.daemon)
		}
	}
}
