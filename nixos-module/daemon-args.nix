# The `shoal daemon` command line for a services.shoal configuration.
#
# Plain Nix with builtins only, so that it can be evaluated where there is Nix but no
# nixpkgs: the Go test cmd/shoal/nixos_module_test.go evaluates it for each option and
# parses the result with shoal's own CLI, so an option can't pass a flag the daemon
# doesn't have. Flags that newer daemons add (cache size, LAN, DHT, fleet key) are
# passed only when their option is set away from its default: a configuration that
# doesn't ask for a feature never depends on its flag.
{
  # config.services.shoal, or an attribute set with the same names.
  cfg,
  # Quotes one value for systemd's ExecStart=. Every value that comes from the
  # configuration goes through it; flag names and fleetKeyPath do not.
  escape ? (s: s),
  # Where the service finds the fleet key. The module passes "%d/fleet-key": the key
  # file is handed over with LoadCredential=, so the service user can read it without
  # it being world-readable or in the Nix store.
  fleetKeyPath,
  defaults ? import ./defaults.nix,
}:
let
  value = v: escape (toString v);
  # `switch`, `flag`, `flags` and `rawFlag` are the only places flag names appear, so
  # that the Go test can find every flag this file can pass.
  switch = name: [ "--${name}" ];
  rawFlag = name: v: [
    "--${name}"
    v
  ];
  flag = name: v: rawFlag name (value v);
  flags = name: vs: builtins.concatMap (flag name) vs;
  when = cond: xs: if cond then xs else [ ];

  # IPv6 literals need brackets in host:port.
  hostPort =
    host: port: if builtins.match ".*:.*" host != null then "[${host}]:${toString port}" else "${host}:${toString port}";

  peering = cfg.lan.enable || cfg.dht.enable;
  # The daemon listens for peers on TCP and QUIC by default, TCP only with a fleet key
  # (libp2p's private networks have no QUIC); a port of one's own needs the same shape.
  peerAddrs =
    let
      p = toString cfg.peerPort;
    in
    [
      "/ip4/0.0.0.0/tcp/${p}"
      "/ip6/::/tcp/${p}"
    ]
    ++ when (cfg.fleetKeyFile == null) [
      "/ip4/0.0.0.0/udp/${p}/quic-v1"
      "/ip6/::/udp/${p}/quic-v1"
    ];
in
flag "listen" (hostPort cfg.listenAddress cfg.port)
++ flag "priority" cfg.priority
++ when (cfg.store != null) (flag "store" cfg.store)
++ flags "upstream" cfg.upstreams
++ flags "trusted-public-key" cfg.trustedPublicKeys
++ when (cfg.cacheSize != null) (flag "cache-size" cfg.cacheSize)
++ flags "pin-closure-of" cfg.pinClosureOf
++ when cfg.lan.enable (switch "lan")
++ when cfg.dht.enable (switch "dht")
++ when (cfg.dht.enable && cfg.dht.mode != null) (flag "dht-mode" cfg.dht.mode)
++ when cfg.dht.enable (flags "bootstrap-peer" cfg.dht.bootstrapPeers)
++ when (peering && cfg.peerPort != defaults.peerPort) (flags "peer-listen" peerAddrs)
++ when (peering && cfg.fleetKeyFile != null) (rawFlag "fleet-key" fleetKeyPath)
++ when ((cfg.logLevel or null) != null) (flag "log-level" cfg.logLevel)
++ map escape cfg.extraArgs
