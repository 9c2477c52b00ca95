package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/buildinfo"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/localcache"
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

// The cache commands find a running daemon by its address before looking for a
// cache file: on NixOS the daemon's state directory is not the user's, and may not
// be readable.
func TestCacheCommandsFindTheDaemon(t *testing.T) {
	c := cachetest.New(t, "find-1")
	daemonState := t.TempDir()
	d := startCLIDaemon(t, "--upstream", c.Dir, "--trusted-public-key", c.PublicKey, "--state-dir", daemonState, "--seed-store", "")
	t.Setenv("STATE_DIRECTORY", "")
	t.Setenv("XDG_STATE_HOME", t.TempDir()) // no cache here

	code, out, errOut := runCLI(t, "status", "--daemon", d.addr, "--json")
	var st daemon.Status
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || !st.Daemon || st.StateDir != daemonState {
		t.Fatalf("status without --state-dir: exit %d, %v, %s%s", code, err, out, errOut)
	}
	const path = "/nix/store/00000000000000000000000000000000-pinned-1.0"
	if code, out, errOut := runCLI(t, "pin", "--daemon", d.addr, path); code != 0 {
		t.Fatalf("pin: exit %d, %s%s", code, out, errOut)
	}
	if _, out, _ := runCLI(t, "status", "--daemon", d.addr); !strings.Contains(out, path) || !strings.Contains(out, "evicted:") {
		t.Errorf("status through the daemon:\n%s", out)
	}

	// An explicit --state-dir that is not the daemon's means that directory's file.
	other := t.TempDir()
	if code, _, errOut := runCLI(t, "status", "--daemon", d.addr, "--state-dir", other); code != 1 || !strings.Contains(errOut, "no cache at "+other) {
		t.Errorf("status --state-dir %s: exit %d, %s", other, code, errOut)
	}
}

// With the daemon stopped, status shows the budget the daemon will apply, not
// "unbounded".
func TestStatusOfStoppedDaemonShowsItsBudget(t *testing.T) {
	c := cachetest.New(t, "budget-1")
	state := t.TempDir()
	d := startCLIDaemon(t, "--upstream", c.Dir, "--trusted-public-key", c.PublicKey, "--state-dir", state, "--seed-store", "")
	if code, logs := d.stop(); code != 0 {
		t.Fatalf("daemon exited %d:\n%s", code, logs)
	}
	nowhere := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	want, err := localcache.DefaultBudget(state)
	if err != nil {
		t.Fatal(err)
	}
	_, out, errOut := runCLI(t, "status", "--daemon", nowhere, "--state-dir", state)
	if !strings.Contains(out, "budget "+daemon.FormatBytes(want)+" (the daemon's default: 10% of the file system)") {
		t.Errorf("status:\n%s%s", out, errOut)
	}
	t.Setenv("SHOAL_CACHE_SIZE", "5GiB")
	if _, out, errOut := runCLI(t, "status", "--daemon", nowhere, "--state-dir", state); !strings.Contains(out, "budget 5.0 GiB (--cache-size)") {
		t.Errorf("status with SHOAL_CACHE_SIZE=5GiB:\n%s%s", out, errOut)
	}
}

// A --store that is not a chunk store is refused at start when it is on this
// machine, and reported loudly, in the log, status and /metrics, when it is remote.
func TestDaemonChecksTheStore(t *testing.T) {
	c := cachetest.New(t, "check-1")
	base := []string{"daemon", "--listen", "127.0.0.1:0", "--upstream", c.Dir, "--trusted-public-key", c.PublicKey, "--seed-store", ""}
	for _, tc := range []struct{ name, store string }{
		{"missing directory", filepath.Join(t.TempDir(), "absent")},
		{"binary cache", c.Dir},
		{"binary cache as a URL", "file://" + c.Dir},
	} {
		code, _, errOut := runCLI(t, append(base, "--state-dir", t.TempDir(), "--store", tc.store)...)
		if code != 1 || !strings.Contains(errOut, "is not a chunk store: it has no shoal-store.json") {
			t.Errorf("%s: exit %d, %s", tc.name, code, errOut)
		}
	}

	srv := httptest.NewServer(http.FileServer(http.Dir(c.Dir)))
	defer srv.Close()
	d := startCLIDaemon(t, "--upstream", c.Dir, "--trusted-public-key", c.PublicKey, "--seed-store", "", "--state-dir", t.TempDir(), "--store", srv.URL)
	var st daemon.Status
	for deadline := time.Now().Add(20 * time.Second); st.StoreProblem == ""; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("status never reported the store:\n%s", d.logs.String())
		}
		_, out, _ := runCLI(t, "status", "--daemon", d.addr, "--json")
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
	}
	if _, out, _ := runCLI(t, "status", "--daemon", d.addr); !strings.Contains(out, "store:        UNUSABLE: "+srv.URL+" is not a chunk store") {
		t.Errorf("status:\n%s", out)
	}
	if !strings.Contains(d.logs.String(), "level=ERROR msg=\"chunk store unusable") {
		t.Errorf("no error in the log:\n%s", d.logs.String())
	}
	if m := get(t, "http://"+d.addr+"/metrics"); !strings.Contains(m, "\nshoal_store_unusable 1\n") {
		t.Errorf("metrics:\n%s", m)
	}
}

// The start line says which build runs, with what state, budget and trusted keys
// (by name); a stop is logged; /metrics names the build.
func TestDaemonSaysWhatItIs(t *testing.T) {
	c := cachetest.New(t, "say-1")
	state := t.TempDir()
	d := startCLIDaemon(t, "--upstream", c.Dir, "--trusted-public-key", c.PublicKey, "--seed-store", "", "--state-dir", state, "--cache-size", "1GiB")
	version := buildinfo.Read()
	if m := get(t, "http://"+d.addr+"/metrics"); !strings.Contains(m, fmt.Sprintf("shoal_build_info{version=%q,", version.Version)) {
		t.Errorf("no shoal_build_info in /metrics:\n%s", m)
	}
	code, logs := d.stop()
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, logs)
	}
	start := ""
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `msg="serving Nix"`) {
			start = line
		}
	}
	for _, want := range []string{
		fmt.Sprintf("version=%q", version.String()),
		"state_dir=" + state,
		`cache_budget="1.0 GiB"`,
		"trusted_keys=[say-1]",
		"store=none",
	} {
		if !strings.Contains(start, want) {
			t.Errorf("start line lacks %s: %s", want, start)
		}
	}
	if strings.Contains(logs, c.PublicKey[len("say-1:"):]) {
		t.Errorf("the log holds a key, not just its name:\n%s", logs)
	}
	if !strings.Contains(logs, `msg="stopped serving Nix"`) {
		t.Errorf("no shutdown line:\n%s", logs)
	}
}

// fetchNAR asks the daemon for a store path as Nix does: its narinfo, then the NAR
// at the URL the narinfo names.
func fetchNAR(t *testing.T, addr, hashPart string) []byte {
	t.Helper()
	info := get(t, "http://"+addr+"/"+hashPart+".narinfo")
	for _, line := range strings.Split(info, "\n") {
		if u, ok := strings.CutPrefix(line, "URL: "); ok {
			return []byte(get(t, "http://"+addr+"/"+u))
		}
	}
	t.Fatalf("narinfo of %s has no URL:\n%s", hashPart, info)
	return nil
}

// status and /metrics say what shoal saved against whole NARs: an upgrade that
// shares most of its chunks with the version before saves most of its NAR.
func TestDaemonShowsBytesSaved(t *testing.T) {
	cache := cachetest.New(t, "saved-1")
	v1 := crashNARs(1)[0]
	v2 := append(append([]byte{}, v1...), []byte("a small change")...)
	hp1, hp2 := cachetest.HashPart("saved-v1"), cachetest.HashPart("saved-v2")
	cache.Add(t, hp1, "saved-1.0", v1, "zstd")
	ni2 := cache.Add(t, hp2, "saved-1.1", v2, "zstd")
	storeDir := t.TempDir()
	if code, _, errOut := runCLI(t, "--log-level", "error", "publish", "--from", "file://"+cache.Dir, "--to", storeDir, "--trusted-public-key", cache.PublicKey, "--all"); code != 0 {
		t.Fatalf("publish: exit %d, %s", code, errOut)
	}
	d := startCLIDaemon(t, "--upstream", cache.Dir, "--trusted-public-key", cache.PublicKey, "--seed-store", "",
		"--state-dir", t.TempDir(), "--store", storeDir)
	for _, hp := range []string{hp1, hp2} {
		fetchNAR(t, d.addr, hp)
	}
	_, out, _ := runCLI(t, "status", "--daemon", d.addr, "--json")
	var st daemon.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	sv := st.Savings
	// Version 1 comes whole, without a manifest: nothing to choose, nothing saved.
	// Version 2 costs the chunks that differ: far less than its whole NAR.
	if sv.NARsFromChunks != 1 || sv.WholeBytes != int64(ni2.FileSize) || sv.SavedBytes < int64(ni2.FileSize)*9/10 {
		t.Errorf("savings %+v, want version 2 from chunks, most of its %d bytes saved\n%s", sv, ni2.FileSize, d.logs.String())
	}
	metrics := get(t, "http://"+d.addr+"/metrics")
	for _, want := range []string{
		fmt.Sprintf("\nshoal_whole_nar_bytes_total %d\n", sv.WholeBytes),
		fmt.Sprintf("\nshoal_saved_bytes_total{by=\"local\"} %d\n", sv.SavedBytes-sv.DeltaSavedBytes),
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if _, out, _ := runCLI(t, "status", "--daemon", d.addr); !strings.Contains(out, "saved:        "+daemon.FormatBytes(sv.SavedBytes)+" of "+daemon.FormatBytes(sv.WholeBytes)+" whole NAR files") {
		t.Errorf("status:\n%s", out)
	}
}
