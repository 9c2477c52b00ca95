package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/internal/cachetest"
)

// listenNotify opens a unixgram socket like the one systemd hands a Type=notify unit.
// name is a path, or an abstract name with a leading '@'.
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listening on %s: %v", name, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// receive reads one datagram, failing the test if none comes within a few seconds.
func receive(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("reading the notify socket: %v", err)
	}
	return string(buf[:n])
}

// shortTempDir makes a directory whose socket paths fit sun_path (108 bytes), which
// t.TempDir's long names can exceed.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "shoal-notify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestNotify(t *testing.T) {
	dir := shortTempDir(t)
	pathSocket := filepath.Join(dir, "notify")
	abstract := fmt.Sprintf("@shoal-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	tests := []struct {
		name    string
		listen  string // socket to listen on, "" for none
		socket  string // $NOTIFY_SOCKET
		wantErr string // substring of the error, "" for success
	}{
		{name: "path", listen: pathSocket, socket: pathSocket},
		{name: "abstract", listen: abstract, socket: abstract},
		{name: "unset", socket: ""},
		{name: "relative path", socket: "notify", wantErr: "absolute path"},
		{name: "vsock", socket: "vsock:2:1234", wantErr: "absolute path"},
		{name: "bare at sign", socket: "@", wantErr: "empty"},
		{name: "nobody listening", socket: filepath.Join(dir, "missing"), wantErr: "connecting"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var conn *net.UnixConn
			if tc.listen != "" {
				conn = listenNotify(t, tc.listen)
			}
			err := notifier{socket: tc.socket}.notify(context.Background(), "READY=1\nSTATUS=test")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("notify with NOTIFY_SOCKET=%q: error %v, want one mentioning %q", tc.socket, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("notify with NOTIFY_SOCKET=%q: %v", tc.socket, err)
			}
			if conn != nil {
				if got := receive(t, conn); got != "READY=1\nSTATUS=test" {
					t.Errorf("received %q, want %q", got, "READY=1\nSTATUS=test")
				}
			}
		})
	}
}

// The daemon says READY=1 only once Nix can connect, and STOPPING=1 when it shuts down.
func TestServeNotifiesServiceManager(t *testing.T) {
	socket := filepath.Join(shortTempDir(t), "notify")
	conn := listenNotify(t, socket)
	t.Setenv(notifySocketEnv, socket)

	cache := cachetest.New(t, "notify-1")
	d, err := New(Config{
		Upstreams:   []string{cache.Dir},
		TrustedKeys: []string{cache.PublicKey},
		StateDir:    t.TempDir(),
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, ln) }()

	ready := receive(t, conn)
	if want := "READY=1\nSTATUS=serving Nix on " + ln.Addr().String(); ready != want {
		t.Fatalf("first notification %q, want %q", ready, want)
	}
	resp, err := http.Get("http://" + ln.Addr().String() + "/nix-cache-info")
	if err != nil {
		t.Fatalf("daemon said READY=1 but refused Nix: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("nix-cache-info after READY=1: status %d", resp.StatusCode)
	}

	cancel()
	if got := receive(t, conn); got != "STOPPING=1" {
		t.Errorf("notification on shutdown %q, want STOPPING=1", got)
	}
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}
