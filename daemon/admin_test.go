package daemon_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/cachetest"
)

func TestAdminAPIRefusesCrossSiteRequests(t *testing.T) {
	c := cachetest.New(t, "admin-1")
	state := t.TempDir()
	_, url := startDaemon(t, daemon.Config{Upstreams: []string{c.Dir}, TrustedKeys: []string{c.PublicKey}, StateDir: state})
	token := daemon.ReadAdminToken(state)
	if token == "" {
		t.Fatal("the daemon wrote no admin token")
	}
	tests := []struct {
		name, method, path, contentType, token string
		status                                 int
	}{
		{"status", "GET", "/shoal/status", "", "", 200},
		{"pin as a form post", "POST", "/shoal/pin", "text/plain", token, http.StatusUnsupportedMediaType},
		{"pin without a type", "POST", "/shoal/pin", "", token, http.StatusUnsupportedMediaType},
		{"pin as JSON", "POST", "/shoal/pin", "application/json", token, 200},
		{"pin with GET", "GET", "/shoal/pin", "", token, http.StatusMethodNotAllowed},
		// A local user who can't read the state directory may look, not change.
		{"pin without the token", "POST", "/shoal/pin", "application/json", "", http.StatusForbidden},
		{"gc without the token", "POST", "/shoal/gc", "application/json", "", http.StatusForbidden},
		{"seed without the token", "POST", "/shoal/seed", "application/json", "", http.StatusForbidden},
		{"gc with a wrong token", "POST", "/shoal/gc", "application/json", strings.Repeat("0", 64), http.StatusForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, url+tc.path, strings.NewReader(`{"paths": []}`))
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
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
