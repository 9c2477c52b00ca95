# Defaults of the services.shoal options that configure the daemon.
#
# They live in a file of their own, in plain Nix, so that the module, the command-line
# builder (daemon-args.nix) and the Go test that checks the module against the CLI all
# read the same values. Where a value is also the daemon's own default (port, priority,
# peerPort), the command-line builder leaves the flag out, so a daemon without that flag
# still starts.
{
  listenAddress = "127.0.0.1";
  port = 37515;
  priority = 30;
  store = null;
  upstreams = [ "https://cache.nixos.org" ];
  # The module's default is the system's nix.settings.trusted-public-keys; this is the
  # value that has on a stock NixOS, for evaluating daemon-args.nix without NixOS.
  trustedPublicKeys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
  cacheSize = null;
  pinClosureOf = [ ];
  lan = {
    enable = false;
  };
  dht = {
    enable = false;
    bootstrapPeers = [ ];
    mode = null;
  };
  peerPort = 37516;
  fleetKeyFile = null;
  logLevel = null;
  environmentFile = null;
  extraArgs = [ ];
}
