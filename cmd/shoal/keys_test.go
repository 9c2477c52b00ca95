package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"strings"
	"testing"
)

// A secret key passed as --trusted-public-key is named for what it is, and no part
// of it reaches the output.
func TestSecretKeyAsTrustedKey(t *testing.T) {
	_, sk, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(sk)
	secret := "mine-1:" + b64
	dir := t.TempDir()
	for _, args := range [][]string{
		{"daemon", "--listen", "127.0.0.1:0", "--state-dir", dir, "--upstream", dir},
		{"publish", "--from", dir, "--to", t.TempDir(), "--all"},
		{"serve", "--store", dir},
		{"store", "retire", "--from", dir, "--store", dir, "--older-than", "1d"},
		{"analyze", "dedup", "--from", "file://" + dir, "--all"},
	} {
		code, out, errOut := runCLI(t, append(args, "--trusted-public-key", secret)...)
		if code != exitUsage || !strings.Contains(errOut, `(named "mine-1") looks like a secret key`) {
			t.Errorf("%s: exit %d, %s", args[0], code, errOut)
		}
		for i := 0; i+6 <= len(b64); i++ {
			if strings.Contains(out+errOut, b64[i:i+6]) {
				t.Errorf("%s: the output holds part of the secret key (%q):\n%s", args[0], b64[i:i+6], errOut)
				break
			}
		}
	}
}
