package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/testkit"
)

// cliDaemon is `shoal daemon` run as main runs it, inside the test.
type cliDaemon struct {
	addr string               // host:port it serves on
	logs *testkit.SyncBuffer  // its stderr
	stop func() (int, string) // stops it, returning its exit status and stderr
}

// startCLIDaemon runs `shoal daemon args...` on a free loopback port and waits until
// it answers.
func startCLIDaemon(t *testing.T, args ...string) *cliDaemon {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	logs := &testkit.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"shoal", "daemon", "--listen", addr}, args...), io.Discard, logs)
	}()
	stopped := false
	var code int
	stop := func() (int, string) {
		if !stopped {
			cancel()
			code = <-done
			stopped = true
		}
		return code, logs.String()
	}
	t.Cleanup(func() { stop() })
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, err := http.Get("http://" + addr + "/nix-cache-info")
		if err == nil {
			resp.Body.Close()
			break
		}
		select {
		case code := <-done:
			done <- code
			t.Fatalf("shoal daemon %s exited %d:\n%s", strings.Join(args, " "), code, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("shoal daemon did not answer at %s:\n%s", addr, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &cliDaemon{addr: addr, logs: logs, stop: stop}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// --priority 0 is the highest priority Nix knows and must be served as such; a
// negative one is a mistake.
func TestDaemonPriority(t *testing.T) {
	c := cachetest.New(t, "prio-1")
	for _, p := range []string{"0", "7"} {
		d := startCLIDaemon(t, "--upstream", c.Dir, "--trusted-public-key", c.PublicKey, "--state-dir", t.TempDir(),
			"--seed-store", "", "--priority", p)
		if body := get(t, "http://"+d.addr+"/nix-cache-info"); !strings.Contains(body, "\nPriority: "+p+"\n") {
			t.Errorf("--priority %s: nix-cache-info says\n%s", p, body)
		}
		d.stop()
	}
	code, _, errOut := runCLI(t, "daemon", "--listen", "127.0.0.1:0", "--upstream", c.Dir, "--state-dir", t.TempDir(), "--priority", "-5")
	if code != exitUsage || !strings.Contains(errOut, "--priority -5") {
		t.Errorf("--priority -5: exit %d, %s", code, errOut)
	}
}
