package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/internal/nixtest"
)

// The module's system configuration (default.nix) needs nixpkgs' lib, which the tests
// don't have. serviceExpr evaluates it with a small stand-in for the parts of lib it
// uses, with every option at its declared default merged under the overrides: enough
// to check what the module puts on the system, not the option types.
const serviceExpr = `{ dir, overridesJSON, fleetKeyPath }:
let
  lib = {
    literalExpression = s: s;
    mkEnableOption = d: { _option = true; default = false; };
    mkOption = o: o // { _option = true; };
    mkIf = cond: content: { _type = "if"; inherit cond content; };
    mkBefore = x: x;
    mkDefault = x: x;
    optional = c: x: if c then [ x ] else [ ];
    concatStringsSep = builtins.concatStringsSep;
    hasInfix = i: s: builtins.length (builtins.split i s) > 1;
    types = {
      str = "str"; port = "port"; bool = "bool"; package = "package";
      ints = { positive = "positive"; unsigned = "unsigned"; };
      nullOr = t: t; listOf = t: t; enum = xs: xs; strMatching = r: r;
    };
  };
  resolve = v:
    if builtins.isAttrs v then
      (if (v._type or null) == "if" then (if v.cond then resolve v.content else { }) else builtins.mapAttrs (_: resolve) v)
    else if builtins.isList v then map resolve v
    else v;
  defaultsOf = opts: builtins.mapAttrs (_: o: if o._option or false then o.default else defaultsOf o) opts;
  update = a: b: a // builtins.mapAttrs
    (n: v: if builtins.isAttrs v && builtins.isAttrs (a.${n} or null) then update a.${n} v else v) b;
  module = import (dir + "/default.nix") {
    inherit lib config;
    pkgs.shoal = "/nix/store/00000000000000000000000000000000-shoal";
  };
  config = {
    services.shoal = update (defaultsOf module.options.services.shoal) (builtins.fromJSON overridesJSON);
    nix.settings.trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
    nix.package = "/nix/store/00000000000000000000000000000000-nix";
  };
in resolve module.config`

// moduleSystem is the part of the module's configuration these tests look at.
type moduleSystem struct {
	Environment struct {
		SystemPackages []string          `json:"systemPackages"`
		Variables      map[string]string `json:"variables"`
	} `json:"environment"`
	Systemd struct {
		Services struct {
			Shoal struct {
				ServiceConfig struct {
					ExecStart       string   `json:"ExecStart"`
					EnvironmentFile []string `json:"EnvironmentFile"`
					LoadCredential  []string `json:"LoadCredential"`
				} `json:"serviceConfig"`
			} `json:"shoal"`
		} `json:"services"`
	} `json:"systemd"`
}

// With the module, an admin's shoal status works: the CLI is on the PATH and
// pointed at the daemon; S3 credentials reach the daemon from a file outside the
// store; the log level is an option.
func TestModuleSystem(t *testing.T) {
	env := nixtest.NewEnv(t)
	var sys moduleSystem
	evalNix(t, env, serviceExpr, `{"enable": true}`, &sys)
	if !slices.Contains(sys.Environment.SystemPackages, "/nix/store/00000000000000000000000000000000-shoal") {
		t.Errorf("shoal is not in environment.systemPackages: %q", sys.Environment.SystemPackages)
	}
	if got := sys.Environment.Variables["SHOAL_DAEMON"]; got != "127.0.0.1:37515" {
		t.Errorf("SHOAL_DAEMON = %q, want the daemon's listen address", got)
	}
	if len(sys.Systemd.Services.Shoal.ServiceConfig.EnvironmentFile) != 0 {
		t.Errorf("EnvironmentFile set without environmentFile: %q", sys.Systemd.Services.Shoal.ServiceConfig.EnvironmentFile)
	}

	evalNix(t, env, serviceExpr, `{"enable": true, "listenAddress": "::1", "port": 4000, "environmentFile": "/run/secrets/shoal-s3", "logLevel": "debug", "store": "s3://chunks/store?region=eu-west-1"}`, &sys)
	sc := sys.Systemd.Services.Shoal.ServiceConfig
	if got := sys.Environment.Variables["SHOAL_DAEMON"]; got != "[::1]:4000" {
		t.Errorf("SHOAL_DAEMON = %q, want [::1]:4000", got)
	}
	if !slices.Equal(sc.EnvironmentFile, []string{"/run/secrets/shoal-s3"}) {
		t.Errorf("EnvironmentFile = %q", sc.EnvironmentFile)
	}
	for _, want := range []string{` --log-level "debug"`, ` --store "s3://chunks/store?region=eu-west-1"`} {
		if !strings.Contains(sc.ExecStart, want) {
			t.Errorf("ExecStart lacks %s: %s", want, sc.ExecStart)
		}
	}
}

// The flake offers the package as packages.shoal as well as packages.default.
func TestFlakePackages(t *testing.T) {
	env := nixtest.NewEnv(t)
	const expr = `{ dir, ... }:
let
  flake = import (dir + "/../flake.nix");
  nixpkgs = {
    lib = {
      genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
      filter = builtins.filter;
    };
    legacyPackages.x86_64-linux.callPackage = f: args: "package";
  };
  outputs = flake.outputs { self = outputs // { shortRev = "0000000"; }; inherit nixpkgs; };
in builtins.attrNames outputs.packages.x86_64-linux`
	var names []string
	evalNix(t, env, expr, `{}`, &names)
	if !slices.Equal(names, []string{"default", "shoal"}) {
		t.Errorf("packages.x86_64-linux has %q, want default and shoal", names)
	}
}
