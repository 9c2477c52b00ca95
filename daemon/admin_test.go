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
	_, url := startDaemon(t, daemon.Config{Upstreams: []string{c.Dir}, TrustedKeys: []string{c.PublicKey}})
	tests := []struct {
		name, method, path, contentType string
		status                          int
	}{
		{"status", "GET", "/shoal/status", "", 200},
		{"pin as a form post", "POST", "/shoal/pin", "text/plain", http.StatusUnsupportedMediaType},
		{"pin without a type", "POST", "/shoal/pin", "", http.StatusUnsupportedMediaType},
		{"pin as JSON", "POST", "/shoal/pin", "application/json", 200},
		{"pin with GET", "GET", "/shoal/pin", "", http.StatusMethodNotAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, url+tc.path, strings.NewReader(`{"paths": []}`))
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
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
