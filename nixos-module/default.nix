# NixOS module for shoal: `services.shoal.enable = true;`
#
# Runs `shoal daemon` on loopback and puts it in front of the system's other
# substituters. cache.nixos.org stays in the list, so a stopped daemon costs Nix one
# refused connection, never a failed build.
#
# Import it by path (imports = [ ./nixos-module ];) with the shoal package in pkgs (the
# flake's overlays.default adds it), or through the flake's nixosModules.default, which
# also supplies the package.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    optional
    types
    ;

  cfg = config.services.shoal;
  defaults = import ./defaults.nix;

  peering = cfg.lan.enable || cfg.dht.enable;

  # How systemd reads one ExecStart= word: JSON quoting survives systemd's C-style
  # unquoting, and % and $ would otherwise be specifiers and variable references.
  systemdEscape = s: builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON s);

  daemonArgs = import ./daemon-args.nix {
    inherit cfg defaults;
    escape = systemdEscape;
    fleetKeyPath = "%d/fleet-key";
  };

  host = a: if lib.hasInfix ":" a then "[${a}]" else a;
  substituterURL = "http://${host cfg.listenAddress}:${toString cfg.port}?priority=${toString cfg.priority}";
in
{
  options.services.shoal = {
    enable = mkEnableOption "shoal, a Nix substituter that downloads what changed instead of whole packages";

    package = mkOption {
      type = types.package;
      default =
        pkgs.shoal
          or (throw "services.shoal.package: pkgs has no shoal. Import the shoal flake's nixosModules.default, add its overlays.default to nixpkgs.overlays, or set services.shoal.package.");
      defaultText = literalExpression "pkgs.shoal";
      description = "The shoal package to run.";
    };

    listenAddress = mkOption {
      type = types.str;
      default = defaults.listenAddress;
      description = ''
        Address the daemon serves Nix on. Keep it on loopback: the endpoint is meant for
        this machine's nix-daemon, and peers talk to each other on `peerPort` instead.
      '';
    };

    port = mkOption {
      type = types.port;
      default = defaults.port;
      description = "TCP port the daemon serves Nix on.";
    };

    priority = mkOption {
      type = types.ints.unsigned;
      default = defaults.priority;
      description = ''
        Priority of the daemon as a substituter; lower wins, and cache.nixos.org says 40,
        so by default Nix asks shoal first.
      '';
    };

    store = mkOption {
      type = types.nullOr types.str;
      default = defaults.store;
      example = "https://chunks.example.org";
      description = ''
        Chunk store written by `shoal publish`: a directory, `file://`, `http(s)://` or
        `s3://bucket/prefix?region=R&endpoint=URL` (credentials through
        `environmentFile`). Without one, the daemon fetches whole NARs from the upstreams
        and keeps their chunks, so later versions can reuse them.
      '';
    };

    upstreams = mkOption {
      type = types.listOf types.str;
      default = defaults.upstreams;
      description = "Plain binary caches for narinfos and whole NARs, asked in order.";
    };

    trustedPublicKeys = mkOption {
      type = types.listOf types.str;
      default = config.nix.settings.trusted-public-keys;
      defaultText = literalExpression "config.nix.settings.trusted-public-keys";
      description = ''
        Keys (`name:base64`) whose signatures make a narinfo acceptable. shoal never
        re-signs anything, so these are the keys Nix already trusts.
      '';
    };

    cacheSize = mkOption {
      type = types.nullOr types.str;
      default = defaults.cacheSize;
      example = "20GiB";
      description = ''
        Budget for the local chunk cache, with units; least recently used chunks that
        aren't pinned are evicted past it. `null` leaves it to the daemon's default (a
        tenth of the file system holding the state directory), `"0"` means no bound.
      '';
    };

    pinClosureOf = mkOption {
      type = types.listOf types.str;
      default = defaults.pinClosureOf;
      example = [ "/run/current-system" ];
      description = ''
        Store paths whose closures' chunks stay in the local cache whatever `cacheSize`
        says, refreshed hourly: with `/run/current-system`, the next upgrade finds the
        running system's chunks.
      '';
    };

    lan = {
      enable = mkEnableOption "sharing chunks with other shoal daemons on the local network, found through mDNS (needs a daemon with `--lan`)";
    };

    dht = {
      enable = mkEnableOption "finding peers beyond the local network through a Kademlia DHT (needs a daemon with `--dht`)";

      bootstrapPeers = mkOption {
        type = types.listOf types.str;
        default = defaults.dht.bootstrapPeers;
        example = [ "/ip4/192.0.2.10/tcp/37516/p2p/12D3KooWExample" ];
        description = ''
          Multiaddresses of peers to join the DHT through (`shoal id` prints a daemon's
          peer ID). No public bootstrap peers are used unless listed here.
        '';
      };

      mode = mkOption {
        type = types.nullOr (
          types.enum [
            "server"
            "client"
            "auto"
          ]
        );
        default = defaults.dht.mode;
        description = ''
          DHT mode; `null` leaves it to the daemon. Fleet machines on one private
          network should say `"server"`: in `"auto"` mode such nodes never form a DHT.
        '';
      };
    };

    peerPort = mkOption {
      type = types.port;
      default = defaults.peerPort;
      description = ''
        Port peers connect to (TCP, and UDP for QUIC unless a fleet key is set). Only
        used with `lan.enable` or `dht.enable`.
      '';
    };

    fleetKeyFile = mkOption {
      type = types.nullOr (types.strMatching "/.+");
      default = defaults.fleetKeyFile;
      example = "/run/secrets/shoal-fleet-key";
      description = ''
        File holding the fleet's pre-shared key: only daemons holding it can connect to
        each other. An absolute path as a string, so the key never enters the Nix store;
        systemd hands it to the service with `LoadCredential=`.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the peer port and, with `lan.enable`, mDNS (UDP 5353) in the firewall. The
        port Nix talks to is never opened.
      '';
    };

    logLevel = mkOption {
      type = types.nullOr (
        types.enum [
          "debug"
          "info"
          "warn"
          "error"
        ]
      );
      default = defaults.logLevel;
      example = "debug";
      description = ''
        How much the daemon logs to the journal; `null` leaves it to the daemon (`info`:
        one line per NAR, saying where its bytes came from).
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr (types.strMatching "/.+");
      default = defaults.environmentFile;
      example = "/run/secrets/shoal-s3";
      description = ''
        File of `NAME=value` lines added to the daemon's environment, read by systemd
        before it drops privileges, so it can stay root-only and out of the Nix store.
        For an `s3://` store: `AWS_ACCESS_KEY_ID=...` and `AWS_SECRET_ACCESS_KEY=...`.
        Any flag can be set here too, as `SHOAL_<FLAG>`.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = defaults.extraArgs;
      example = [
        "--verify-wait"
        "30s"
      ];
      description = "Further arguments to `shoal daemon`.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.upstreams != [ ];
        message = "services.shoal.upstreams is empty: the daemon would fall back to its built-in default (cache.nixos.org) instead. List at least one binary cache.";
      }
      {
        assertion = cfg.trustedPublicKeys != [ ];
        message = "services.shoal.trustedPublicKeys is empty: the daemon would fall back to cache.nixos.org's key instead. List the keys whose signatures it should accept.";
      }
      {
        assertion = cfg.dht.bootstrapPeers == [ ] || cfg.dht.enable;
        message = "services.shoal.dht.bootstrapPeers is set but services.shoal.dht.enable is false: enable the DHT or drop the bootstrap peers.";
      }
      {
        assertion = cfg.dht.mode == null || cfg.dht.enable;
        message = "services.shoal.dht.mode is set but services.shoal.dht.enable is false: enable the DHT or leave the mode unset.";
      }
      {
        assertion = cfg.fleetKeyFile == null || peering;
        message = "services.shoal.fleetKeyFile only restricts which peers may connect, and neither services.shoal.lan.enable nor services.shoal.dht.enable is set.";
      }
      {
        assertion = !peering || cfg.peerPort != cfg.port;
        message = "services.shoal.peerPort and services.shoal.port are both ${toString cfg.port}: peers and Nix need different ports.";
      }
    ];

    warnings = optional (cfg.openFirewall && !peering) "services.shoal.openFirewall does nothing without services.shoal.lan.enable or services.shoal.dht.enable: the port Nix talks to is never opened.";

    # The CLI on the PATH, pointed at the daemon: shoal status, pin and gc reach it
    # through its admin API (loopback only), since its state directory is the service's.
    environment.systemPackages = [ cfg.package ];
    environment.variables.SHOAL_DAEMON = "${host cfg.listenAddress}:${toString cfg.port}";

    # Added to the substituters, not replacing them: cache.nixos.org keeps its slot.
    # The URL's priority wins over nix-cache-info's, so the two always agree.
    nix.settings.substituters = lib.mkBefore [ substituterURL ];

    networking.firewall = mkIf (cfg.openFirewall && peering) {
      allowedTCPPorts = [ cfg.peerPort ];
      allowedUDPPorts = optional (cfg.fleetKeyFile == null) cfg.peerPort ++ optional cfg.lan.enable 5353;
    };

    systemd.services.shoal = {
      description = "shoal, a deduplicating Nix substituter";
      documentation = [ "https://github.com/shoal-nix/shoal" ];
      wantedBy = [ "multi-user.target" ];
      # The daemon contacts nothing to start, so it needs no network-online.target.
      after = [ "network.target" ];
      # nix-store answers the closure queries of pinClosureOf.
      path = [ config.nix.package ];
      serviceConfig = {
        # shoal says READY=1 once its listener is up (sd_notify).
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/shoal daemon ${lib.concatStringsSep " " daemonArgs}";
        Restart = "on-failure";
        RestartSec = 5;

        DynamicUser = true;
        # The daemon reads $STATE_DIRECTORY for its chunk cache.
        StateDirectory = "shoal";
        StateDirectoryMode = "0700";
        LoadCredential = optional (peering && cfg.fleetKeyFile != null) "fleet-key:${cfg.fleetKeyFile}";
        EnvironmentFile = optional (cfg.environmentFile != null) cfg.environmentFile;
        # Nix opens up to 25 connections, and every peer a few more.
        LimitNOFILE = 65536;

        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateUsers = true;
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        RemoveIPC = true;
        UMask = "0077";
        # AF_UNIX for the notify socket; AF_NETLINK because libp2p lists interfaces.
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
          "AF_NETLINK"
        ];
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
      };
    };
  };
}
