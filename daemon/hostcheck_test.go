package daemon_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/cachetest"
)

// TestForeignHostRefused plays a DNS-rebinding page: its requests reach the daemon on
// loopback, but name the attacker's host, and (from fetch) carry its Origin.
func TestForeignHostRefused(t *testing.T) {
	c := cachetest.New(t, "host-1")
	state := t.TempDir()
	_, base := startDaemon(t, daemon.Config{Upstreams: []string{c.Dir}, TrustedKeys: []string{c.PublicKey}, StateDir: state})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	port := u.Port()
	tests := []struct {
		name, method, path, host, origin string
		status                           int
	}{
		{"nix-cache-info by address", "GET", "/nix-cache-info", "127.0.0.1:" + port, "", 200},
		{"nix-cache-info by localhost", "GET", "/nix-cache-info", "localhost:" + port, "", 200},
		{"nix-cache-info by IPv6 loopback", "GET", "/nix-cache-info", "[::1]:" + port, "", 200},
		{"status from the CLI", "GET", "/shoal/status", "127.0.0.1:" + port, "", 200},
		{"nix-cache-info, rebound name", "GET", "/nix-cache-info", "evil.example:" + port, "", http.StatusMisdirectedRequest},
		{"status, rebound name", "GET", "/shoal/status", "evil.example:" + port, "", http.StatusMisdirectedRequest},
		{"gc, rebound name", "POST", "/shoal/gc", "evil.example:" + port, "http://evil.example:" + port, http.StatusMisdirectedRequest},
		{"status through a port forward", "GET", "/shoal/status", "127.0.0.1:1", "", 200},
		{"status, no port", "GET", "/shoal/status", "localhost", "", 200},
		{"status, loopback-looking name", "GET", "/shoal/status", "127.0.0.1.evil.example:" + port, "", http.StatusMisdirectedRequest},
		{"status, foreign origin", "GET", "/shoal/status", "127.0.0.1:" + port, "http://evil.example", http.StatusForbidden},
		{"pin, foreign origin", "POST", "/shoal/pin", "127.0.0.1:" + port, "http://evil.example", http.StatusForbidden},
		{"pin, opaque origin", "POST", "/shoal/pin", "127.0.0.1:" + port, "null", http.StatusForbidden},
		{"pin from another local web service", "POST", "/shoal/pin", "127.0.0.1:" + port, "http://127.0.0.1:8080", http.StatusForbidden},
		{"pin, own origin", "POST", "/shoal/pin", "127.0.0.1:" + port, "http://127.0.0.1:" + port, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, base+tc.path, strings.NewReader(`{"paths": [], "to_bytes": 0}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Host = tc.host
			if tc.method == "POST" {
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+daemon.ReadAdminToken(state))
			}
			if tc.origin != "" {
				req.Header.Set("Origin", tc.origin)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
}
