package p2p

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/pnet"
)

// IdentityFile is the name of the peer key in the state directory. Keeping it makes the
// daemon's peer ID stable across restarts, so peers' blocklists and connection state
// follow the machine, not the process.
const IdentityFile = "peer.key"

// LoadIdentity reads the daemon's libp2p key from dir, creating an Ed25519 key on first
// use. The file is written to a temporary name and renamed, so a crash never leaves a
// half-written key behind.
func LoadIdentity(dir string) (crypto.PrivKey, error) {
	path := filepath.Join(dir, IdentityFile)
	raw, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, err := crypto.UnmarshalPrivateKey(raw)
		if err != nil {
			return nil, fmt.Errorf("reading peer identity %s: %w", path, err)
		}
		return k, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("reading peer identity: %w", err)
	}
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, fmt.Errorf("generating peer identity: %w", err)
	}
	raw, err = crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encoding peer identity: %w", err)
	}
	tmp, err := os.CreateTemp(dir, IdentityFile+".*")
	if err != nil {
		return nil, fmt.Errorf("writing peer identity: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("writing peer identity: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("writing peer identity: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("writing peer identity: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, fmt.Errorf("writing peer identity: %w", err)
	}
	return k, nil
}

// FleetKeyHelp says how to make a fleet key; the CLI and the README repeat it.
const FleetKeyHelp = `printf '/key/swarm/psk/1.0.0/\n/base16/\n%s\n' "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" > fleet.key`

// ReadFleetKey reads a pre-shared key in libp2p's swarm.key format (the header
// /key/swarm/psk/1.0.0/, an encoding line /base16/, then 32 bytes as 64 hex digits).
// Only daemons with the same key can connect to each other.
func ReadFleetKey(path string) (pnet.PSK, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading fleet key: %w", err)
	}
	psk, err := pnet.DecodeV1PSK(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("fleet key %s: %w (make one with: %s)", path, err, FleetKeyHelp)
	}
	if len(psk) != 32 {
		return nil, fmt.Errorf("fleet key %s holds %d bytes, want 32", path, len(psk))
	}
	if bytes.Equal(psk, make([]byte, 32)) {
		return nil, fmt.Errorf("fleet key %s is all zeros", path)
	}
	return psk, nil
}
