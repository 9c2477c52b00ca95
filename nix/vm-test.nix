# Multi-node NixOS VM test: a CDN and three machines running services.shoal.
#
#   cdn      a signed binary cache of a small closure, and the chunk store `shoal publish`
#            made from it, served over HTTP
#   client1  substitutes the closure through its daemon
#   (the CDN is cut off)
#   client2, client3  still substitute it, from client1 over the LAN
#   client3  with its daemon stopped, Nix still works: shoal's slot refuses, the
#            cache.nixos.org slot is unreachable (the test is hermetic), and Nix builds
#
# It follows nixpkgs' binary-cache tests (nixos/tests/harmonia.nix, ncps.nix): the
# closure is in the CDN's system closure only, so the clients can get it solely by
# substitution, and they trust the test key through nix.settings.
#
# The LAN step needs a daemon with `--lan` (LAN sharing); until it has one, the clients'
# daemons refuse to start with lan.enable set, and this test fails at its first step.
# Run with `nix build .#checks.x86_64-linux.vm -L` where nixpkgs is available.
{
  pkgs,
  shoal,
  module,
}:
let
  # A key for this test only, like harmonia.nix's.
  secretKey = pkgs.writeText "shoal-vm-test-secret-key" "shoal-vm-test-1:2oPssP2yB8nfQ94zbnRar4Y8boID2jdGdGFLE8wlPaTypPGNfOgRnpl63KXJCvf/4zwY2KXJOkaxOavCH/lHTg==";
  publicKey = "shoal-vm-test-1:8qTxjXzoEZ6ZetylyQr3/+M8GNilyTpGsTmrwh/5R04=";

  # A closure of two paths: the payload refers to its dependency, so substituting it
  # takes two NARs.
  dependency = pkgs.runCommand "shoal-vm-dependency" { } "seq 1 200000 > $out";
  payload = pkgs.runCommand "shoal-vm-payload" { } ''
    mkdir $out
    seq 1 300000 > $out/numbers
    ln -s ${dependency} $out/dependency
  '';

  # Published nowhere, and buildable with what the clients already have (busybox), so
  # a client without a working substituter can still realise it.
  unpublished = derivation {
    name = "shoal-vm-unpublished";
    inherit (pkgs.stdenv.hostPlatform) system;
    builder = "${pkgs.busybox}/bin/sh";
    args = [
      "-c"
      "echo built locally > $out"
    ];
  };
  # Referring to the .drv from a file puts the .drv into the clients' Nix database.
  unpublishedDrv = pkgs.writeText "shoal-vm-unpublished-drv" unpublished.drvPath;

  client =
    { ... }:
    {
      imports = [ module ];
      services.shoal = {
        enable = true;
        package = shoal;
        store = "http://cdn/store";
        upstreams = [ "http://cdn/cache" ];
        trustedPublicKeys = [ publicKey ];
        lan.enable = true;
        openFirewall = true;
      };
      # Nix checks the narinfo signatures itself too: shoal passes them on unchanged.
      nix.settings.trusted-public-keys = [ publicKey ];
      environment.systemPackages = [ pkgs.curl ];
      system.extraDependencies = [
        pkgs.busybox
        unpublishedDrv
      ];
    };
in
pkgs.testers.runNixOSTest {
  name = "shoal";

  nodes = {
    cdn =
      { ... }:
      {
        system.extraDependencies = [ payload ];
        environment.systemPackages = [ shoal ];
        nix.settings.experimental-features = [ "nix-command" ];
        systemd.tmpfiles.rules = [ "d /srv/cdn 0755 root root -" ];
        systemd.services.cdn-http = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig.ExecStart = "${pkgs.python3}/bin/python3 -m http.server --directory /srv/cdn 80";
        };
        networking.firewall.allowedTCPPorts = [ 80 ];
      };
    client1 = client;
    client2 = client;
    client3 = client;
  };

  testScript = ''
    clients = [client1, client2, client3]
    start_all()

    with subtest("the CDN serves a signed cache and its chunk store"):
        cdn.wait_for_unit("cdn-http.service")
        cdn.succeed(
            "nix store sign --key-file ${secretKey} --recursive ${payload}",
            "nix copy --to 'file:///srv/cdn/cache?compression=xz' ${payload}",
            "shoal publish --from file:///srv/cdn/cache --to /srv/cdn/store"
            + " --trusted-public-key '${publicKey}' --all",
        )
        cdn.wait_for_open_port(80)

    with subtest("the module starts the daemon and keeps cache.nixos.org"):
        for c in clients:
            # Type=notify: the unit is active only once the daemon said READY=1.
            c.wait_for_unit("shoal.service")
            c.succeed("curl -sf http://127.0.0.1:37515/nix-cache-info | grep 'Priority: 30'")
            c.succeed("grep -E '^substituters = http://127.0.0.1:37515\\?priority=30 .*https://cache.nixos.org' /etc/nix/nix.conf")
            c.fail("nix-store --check-validity ${payload}")

    with subtest("client 1 substitutes the closure through shoal"):
        client1.succeed("nix-store --realise ${payload}")
        client1.succeed("nix-store --verify-path ${payload} ${dependency}")
        client1.succeed("curl -sf http://127.0.0.1:37515/metrics | grep -E '^shoal_fetched_bytes_total\\{source=\"(store|upstream)\"\\} [1-9]'")
        # The module puts the CLI on the PATH; it reaches the daemon through its admin
        # API, although the cache lies in the service's own 0700 directory.
        client1.succeed("shoal status | grep -E '^saved: '")

    with subtest("with the CDN cut off, clients 2 and 3 substitute from client 1"):
        cdn.block()
        for c in [client2, client3]:
            c.fail("curl -sf --max-time 5 http://cdn/cache/nix-cache-info")
            # Peers may still be finding each other: ask again, and keep Nix from
            # remembering a miss meanwhile.
            c.wait_until_succeeds(
                "nix-store --realise ${payload} --option narinfo-cache-negative-ttl 0",
                timeout=180,
            )
            c.succeed("nix-store --verify-path ${payload} ${dependency}")
            c.succeed("curl -sf http://127.0.0.1:37515/metrics | grep -E '^shoal_fetched_bytes_total\\{source=\"peer\"\\} [1-9]'")

    with subtest("with its daemon stopped, a client still works (here: it builds)"):
        client3.succeed("systemctl stop shoal.service")
        client3.fail("curl -sf http://127.0.0.1:37515/nix-cache-info")
        client3.succeed("nix-store --realise ${unpublished.drvPath}")
        client3.succeed("grep 'built locally' ${unpublished}")
  '';
}
