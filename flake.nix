{
  description = "shoal: a Nix substituter that downloads what changed, not whole packages";

  # shoal's go.mod needs a recent Go; nix/package.nix says so if this nixpkgs is too old.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAll = systems: f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      version = "0.1.0-dev+${self.shortRev or "dirty"}";
    in
    {
      overlays.default = final: _prev: {
        shoal = final.callPackage ./nix/package.nix {
          src = self;
          inherit version;
        };
      };

      packages = forAll systems (
        pkgs:
        let
          shoal = pkgs.callPackage ./nix/package.nix {
            src = self;
            inherit version;
          };
        in
        {
          inherit shoal;
          default = shoal;
        }
      );

      # The module itself takes the package from pkgs.shoal; through the flake it
      # defaults to this flake's build instead, with no overlay needed.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nixos-module ];
          services.shoal.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };

      devShells = forAll systems (pkgs: {
        default = pkgs.mkShell {
          # Go, and what ./test.sh uses besides: a Nix for the end-to-end tests, and the
          # compressors the caches are written with. (Not inputsFrom the package, so
          # entering the shell never waits on a stale vendor hash.)
          packages = [
            pkgs.go
            pkgs.nix
            pkgs.xz
            pkgs.zstd
            pkgs.bzip2
            pkgs.gopls
          ]
          ++ lib.optional pkgs.stdenv.isLinux pkgs.iproute2;
        };
      });

      checks = forAll (lib.filter (lib.hasSuffix "-linux") systems) (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        vm = import ./nix/vm-test.nix {
          inherit pkgs;
          shoal = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          module = ./nixos-module;
        };
      });

      formatter = forAll systems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
