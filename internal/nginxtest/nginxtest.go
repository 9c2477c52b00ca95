// Package nginxtest runs a real nginx on a loopback port for end-to-end tests: the web
// server or CDN in front of a binary cache or a chunk store, with its own prefix,
// configuration and access log.
package nginxtest

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Server is a running nginx.
type Server struct {
	// URL is where it listens, without a trailing slash.
	URL string
	// AccessLog is the path of its access log, in nginx's combined format.
	AccessLog string
}

const conf = `%s
worker_processes 1;
error_log %[2]s/error.log info;
pid %[2]s/nginx.pid;
events { worker_connections 256; }
http {
  access_log %[2]s/access.log combined;
  client_body_temp_path %[2]s/tmp/body;
  proxy_temp_path %[2]s/tmp/proxy;
  fastcgi_temp_path %[2]s/tmp/fastcgi;
  uwsgi_temp_path %[2]s/tmp/uwsgi;
  scgi_temp_path %[2]s/tmp/scgi;
  %[4]s
  server {
    listen %[5]s;
    root %[3]s;
    %[6]s
  }
}
`

// Start runs nginx serving the directory root until the test ends. httpBlock is
// added to the http block (upstreams), serverBlock to the one server (locations);
// either may be empty. Without nginx installed the test is skipped, or fails when
// SHOAL_E2E=1 says the end-to-end tests must run.
func Start(t testing.TB, root, httpBlock, serverBlock string) *Server {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin = "/usr/sbin/nginx" // Debian puts it outside a normal user's PATH
		if _, serr := os.Stat(bin); serr != nil {
			if os.Getenv("SHOAL_E2E") == "1" {
				t.Fatalf("SHOAL_E2E=1 but nginx is not installed (Debian package nginx): %v", err)
			}
			t.Skip("nginx is not installed (Debian package nginx)")
		}
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A free port: bind, note it, release it for nginx.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // workers must read the test's private temporary directories
	}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, fmt.Appendf(nil, conf, user, dir, root, httpBlock, addr, serverBlock), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", path, "-g", "daemon off;")
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting nginx: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx output:\n%s\nerror.log:\n%s", out, log)
		}
	})
	s := &Server{URL: "http://" + addr, AccessLog: filepath.Join(dir, "access.log")}
	for i := 0; ; i++ {
		resp, err := http.Get(s.URL + "/")
		if err == nil {
			resp.Body.Close()
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("nginx exited: %v\n%s", err, out)
		case <-time.After(20 * time.Millisecond):
		}
		if i > 500 {
			t.Fatalf("nginx did not answer on %s: %v\n%s", addr, err, out)
		}
	}
	return s
}
