package nixcache

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// ErrUntrusted is wrapped by every Verify failure, so callers can tell "not
// signed by a key we trust" from other errors.
var ErrUntrusted = errors.New("narinfo is not signed by a trusted key")

// Keyring is the set of public keys whose signatures make a narinfo
// trustworthy, like Nix's trusted-public-keys. Several keys may share a name
// (during a key rotation, for instance); a signature counts if it verifies
// with any of them.
type Keyring struct {
	keys map[string][]signature.PublicKey
}

// ParseKeyring parses keys in Nix's "name:base64(ed25519 public key)" form.
// An empty list is an error because a keyring that trusts nothing would
// reject every narinfo, which is never what a caller means.
func ParseKeyring(keys []string) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("no trusted public keys given")
	}
	k := &Keyring{keys: make(map[string][]signature.PublicKey)}
	for i, s := range keys {
		s = strings.TrimSpace(s)
		pk, err := signature.ParsePublicKey(s)
		if err != nil {
			return nil, fmt.Errorf("trusted public key #%d %q: %w", i+1, truncate(s), err)
		}
		k.keys[pk.Name] = append(k.keys[pk.Name], pk)
	}
	return k, nil
}

// Names returns the distinct key names in the keyring, sorted, for logs.
func (k *Keyring) Names() []string {
	names := make([]string, 0, len(k.keys))
	for name := range k.keys {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Verify reports which trusted key name signed n. Like Nix, it accepts the
// narinfo if any Sig verifies with any trusted key of the same name:
// signatures by unknown keys are skipped, and a corrupt or wrong signature
// does not hide a later valid one. The error wraps ErrUntrusted and says
// why: there were no Sig lines, none came from a trusted key name, or the
// trusted-name signatures did not verify.
func (k *Keyring) Verify(n *NarInfo) (keyName string, err error) {
	if len(n.Sigs) == 0 {
		return "", fmt.Errorf("%s: no Sig lines: %w", n.StorePath, ErrUntrusted)
	}
	fingerprint := n.Fingerprint()
	var untrustedNames, failures []string
	for _, raw := range n.Sigs {
		name, _, _ := strings.Cut(raw, ":")
		keys := k.keys[name]
		if len(keys) == 0 {
			untrustedNames = append(untrustedNames, name)
			continue
		}
		sig, err := signature.ParseSignature(raw)
		if err != nil {
			failures = append(failures, fmt.Sprintf("signature by %s is malformed (%v)", name, err))
			continue
		}
		for _, pk := range keys {
			if pk.Verify(fingerprint, sig) {
				return name, nil
			}
		}
		failures = append(failures, fmt.Sprintf("signature by %s does not verify", name))
	}
	if len(failures) > 0 {
		return "", fmt.Errorf("%s: %s: %w", n.StorePath, strings.Join(failures, "; "), ErrUntrusted)
	}
	return "", fmt.Errorf("%s: no signature from a trusted key name (signed by %s; trusted: %s): %w",
		n.StorePath, strings.Join(untrustedNames, ", "), strings.Join(k.Names(), ", "), ErrUntrusted)
}
