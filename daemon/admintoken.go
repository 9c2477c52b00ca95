package daemon

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// AdminTokenFile, in the state directory, holds the secret the admin calls that
// change anything (pin, unpin, gc, seed) must present. Being able to read it is the
// permission: the file is the daemon user's, mode 0600, so root and that user may
// change the cache; anyone who can reach the loopback port may read the status.
const AdminTokenFile = "admin-token"

// loadAdminToken reads the token, making one the first time.
func loadAdminToken(stateDir string) (string, error) {
	path := filepath.Join(stateDir, AdminTokenFile)
	b, err := os.ReadFile(path)
	if err == nil {
		if t := strings.TrimSpace(string(b)); len(t) >= 32 {
			return t, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("reading the admin token: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("making an admin token: %w", err)
	}
	token := hex.EncodeToString(raw[:])
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(token+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("writing the admin token: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("writing the admin token: %w", err)
	}
	return token, nil
}

// ReadAdminToken returns the token in stateDir for a client, or "" when the caller
// may not read it (or there is none yet).
func ReadAdminToken(stateDir string) string {
	b, err := os.ReadFile(filepath.Join(stateDir, AdminTokenFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// adminAuthorized tells whether r carries the admin token.
func (d *Daemon) adminAuthorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(d.adminToken)) == 1
}
