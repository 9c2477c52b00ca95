package daemon

import (
	"net"
	"strings"
	"testing"
)

func TestExposure(t *testing.T) {
	for _, tc := range []struct {
		addr string
		warn string
	}{
		{"127.0.0.1:37515", ""},
		{"[::1]:37515", ""},
		{"0.0.0.0:37515", "listening on every interface"},
		{"[::]:37515", "listening on every interface"},
		{"192.0.2.7:37515", "listening on a non-loopback address"},
	} {
		addr, err := net.ResolveTCPAddr("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		got := exposure(addr)
		if tc.warn == "" && got != "" || !strings.HasPrefix(got, tc.warn) {
			t.Errorf("%s: %q, want a warning starting %q", tc.addr, got, tc.warn)
		}
	}
}
