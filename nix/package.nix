# The shoal package, for nixpkgs' callPackage: the flake's packages.default, and usable
# without flakes as `pkgs.callPackage ./nix/package.nix { }`.
{
  lib,
  buildGoModule,
  go,
  src ? lib.cleanSource ../.,
  version ? "0.1.0-dev",
}:
let
  # go.mod's `go` line is the oldest Go that builds shoal; a nixpkgs with an older Go
  # would fail deep inside the build, so say it up front.
  goMod = builtins.readFile "${src}/go.mod";
  wantGo = builtins.head (builtins.match ".*\ngo ([0-9.]+)\n.*" goMod);
in
assert lib.assertMsg (lib.versionAtLeast go.version wantGo)
  "shoal needs Go ${wantGo} or newer (go.mod), and this nixpkgs has Go ${go.version}: use a newer nixpkgs.";
(buildGoModule.override { inherit go; }) {
  pname = "shoal";
  inherit version src;

  # The NAR hash of `go mod vendor`'s output. nix/vendor-hash.sh recomputes it after a
  # change to go.mod or go.sum; a stale hash fails the build with the right one in the
  # error message, which can be pasted into nix/vendor-hash as well.
  vendorHash = lib.fileContents ./vendor-hash;

  subPackages = [ "cmd/shoal" ];
  # Only cmd/shoal's tests run here (subPackages): the end-to-end tests elsewhere drive
  # a real Nix and network namespaces, which the build sandbox doesn't offer. The flake's
  # checks.vm runs the daemon for real, on NixOS.
  env.CGO_ENABLED = 0;
  # The version --version, the daemon's start log and shoal_build_info report.
  ldflags = [
    "-s"
    "-w"
    "-X github.com/shoal-nix/shoal/internal/buildinfo.version=${version}"
  ];

  meta = {
    description = "Nix substituter that downloads what changed, not whole packages";
    homepage = "https://github.com/shoal-nix/shoal";
    mainProgram = "shoal";
    platforms = lib.platforms.unix;
  };
}
