package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"strings"

	"github.com/shoal-nix/shoal/nixcache"
	"github.com/urfave/cli/v2"
)

// trustedKeys reads --trusted-public-key. A secret key given by mistake (the file
// nix-store --generate-binary-cache-key writes first) is named as such, and none of
// it is echoed: the error lands in terminals, logs and bug reports.
func trustedKeys(c *cli.Context) (*nixcache.Keyring, error) {
	keys := c.StringSlice("trusted-public-key")
	for i, k := range keys {
		if looksSecret(k) {
			name, _, _ := strings.Cut(strings.TrimSpace(k), ":")
			return nil, usageError("--trusted-public-key #%d (named %q) looks like a secret key: give the public key (the second file nix-store --generate-binary-cache-key writes), and keep the secret one out of command lines", i+1, name)
		}
	}
	kr, err := nixcache.ParseKeyring(keys)
	if err != nil {
		return nil, usageError("--trusted-public-key: %v", err)
	}
	return kr, nil
}

// looksSecret reports a Nix signing key: NAME:BASE64 of an ed25519 private key.
func looksSecret(k string) bool {
	_, b64, ok := strings.Cut(strings.TrimSpace(k), ":")
	if !ok {
		return false
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	return err == nil && len(b) == ed25519.PrivateKeySize
}

// keyNames lists the names of trusted keys for logs, never the keys themselves.
func keyNames(keys []string) []string {
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i], _, _ = strings.Cut(strings.TrimSpace(k), ":")
	}
	return names
}
