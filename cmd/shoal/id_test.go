package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// TestIDCommand checks that shoal id creates the identity once and prints the same
// peer ID every time after, and that the daemon refuses bad DHT settings.
func TestIDCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	var ids []string
	for range 2 {
		app := newApp()
		var out bytes.Buffer
		app.Writer = &out
		if err := app.RunContext(context.Background(), []string{"shoal", "id", "--state-dir", dir}); err != nil {
			t.Fatal(err)
		}
		id := strings.TrimSpace(out.String())
		if _, err := peer.Decode(id); err != nil {
			t.Fatalf("shoal id printed %q: %v", id, err)
		}
		ids = append(ids, id)
	}
	if ids[0] != ids[1] {
		t.Errorf("the peer ID changed between runs: %s, %s", ids[0], ids[1])
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad mode", []string{"--dht-mode", "sever"}, "--dht-mode"},
		{"bootstrap without peer ID", []string{"--bootstrap-peer", "/ip4/10.0.0.1/tcp/37516"}, "/p2p/"},
		{"no announcements", []string{"--dht-announce-max", "0"}, "--dht-announce-max"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"shoal", "--log-level", "error", "daemon", "--dht", "--state-dir", t.TempDir()}, tc.args...)
			err := newApp().RunContext(context.Background(), args)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %s", err, tc.want)
			}
		})
	}
}
