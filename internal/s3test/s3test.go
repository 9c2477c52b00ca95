// Package s3test runs a real S3 server (MinIO) for tests, on 127.0.0.1 with a random
// port and a temporary data directory, and a small reverse proxy in front of it that
// injects the faults S3 clients meet in production: throttling, 5xx and connections cut
// in the middle of an upload.
//
// The MinIO binary is named by SHOAL_TEST_MINIO (./test.sh builds it once at a pinned
// version and caches it). Without it the tests skip, unless SHOAL_E2E=1 says the run
// must not skip anything.
package s3test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Credentials of every test server; tests export them as AWS_* variables so the code
// under test finds them through the ordinary AWS chain.
const (
	AccessKey = "shoal-test-access"
	SecretKey = "shoal-test-secret-key"
)

// Server is one running MinIO.
type Server struct {
	Endpoint string // http://127.0.0.1:PORT
	client   *minio.Client
}

// Start launches MinIO for the test and points the AWS environment variables at it.
// It is stopped when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := os.Getenv("SHOAL_TEST_MINIO")
	if bin == "" {
		if os.Getenv("SHOAL_E2E") == "1" {
			t.Fatal("SHOAL_TEST_MINIO is not set but SHOAL_E2E=1: run ./test.sh, which builds MinIO")
		}
		t.Skip("SHOAL_TEST_MINIO not set: no S3 server to test against")
	}
	t.Setenv("AWS_ACCESS_KEY_ID", AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", SecretKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "server", dir+"/data", "--address", addr, "--console-address", "127.0.0.1:0", "--quiet")
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+AccessKey, "MINIO_ROOT_PASSWORD="+SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "HOME="+dir, "MINIO_CI_CD=1")
	logf, err := os.Create(dir + "/minio.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting MinIO %s: %v", bin, err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		logf.Close()
	})
	s := &Server{Endpoint: "http://" + addr}
	s.client, err = minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(AccessKey, SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := s.client.ListBuckets(rctx)
		rcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(dir + "/minio.log")
			t.Fatalf("MinIO on %s did not come up: %v\n%s", addr, err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return s
}

// Bucket creates a bucket and returns its name.
func (s *Server) Bucket(t testing.TB, name string) string {
	t.Helper()
	if err := s.client.MakeBucket(context.Background(), name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("creating bucket %s: %v", name, err)
	}
	return name
}

// URL is the shoal URL of bucket/prefix on this server.
func (s *Server) URL(bucket, prefix string) string {
	return URL(s.Endpoint, bucket, prefix)
}

// URL is the shoal URL of bucket/prefix on the S3 endpoint.
func URL(endpoint, bucket, prefix string) string {
	u := "s3://" + bucket
	if prefix != "" {
		u += "/" + prefix
	}
	return u + "?endpoint=" + url.QueryEscape(endpoint)
}

// Keys lists every object key in the bucket, for tests that look behind the backend.
func (s *Server) Keys(t testing.TB, bucket string) []string {
	t.Helper()
	var keys []string
	for oi := range s.client.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Recursive: true}) {
		if oi.Err != nil {
			t.Fatal(oi.Err)
		}
		keys = append(keys, oi.Key)
	}
	return keys
}

// Fault is what the proxy does to one request.
type Fault int

const (
	Pass     Fault = iota // forward untouched
	Throttle              // 503 SlowDown, as S3 answers when a prefix is too hot
	Internal              // 500 InternalError
	Cut                   // forward half the body, then drop both connections
)

// Proxy sits between a client and the server and injects faults.
type Proxy struct {
	URL    string // http://127.0.0.1:PORT
	decide atomic.Pointer[func(*http.Request) Fault]

	mu     sync.Mutex
	counts map[Fault]int
}

// NewProxy starts a fault-injecting proxy in front of the server. decide, which may be
// replaced with SetFaults, picks each request's fate; it runs concurrently.
func (s *Server) NewProxy(t testing.TB) *Proxy {
	t.Helper()
	target, _ := url.Parse(s.Endpoint)
	p := &Proxy{counts: map[Fault]int{}}
	p.SetFaults(func(*http.Request) Fault { return Pass })
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		if errors.Is(err, errCut) {
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, herr := hj.Hijack(); herr == nil {
					conn.Close()
					return
				}
			}
		}
		w.WriteHeader(http.StatusBadGateway)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := (*p.decide.Load())(r)
		p.mu.Lock()
		p.counts[f]++
		p.mu.Unlock()
		switch f {
		case Throttle:
			io.Copy(io.Discard, r.Body)
			s3ErrorResponse(w, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate.")
		case Internal:
			io.Copy(io.Discard, r.Body)
			s3ErrorResponse(w, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
		case Cut:
			if r.ContentLength > 1 {
				// The server sees an upload that stops half-way; the client sees its
				// connection dropped without an answer.
				r.Body = io.NopCloser(&cutReader{r: r.Body, left: r.ContentLength / 2})
				rp.ServeHTTP(w, r)
				return
			}
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					conn.Close()
				}
			}
		default:
			rp.ServeHTTP(w, r)
		}
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	p.URL = "http://" + l.Addr().String()
	return p
}

// SetFaults replaces the decision function.
func (p *Proxy) SetFaults(decide func(*http.Request) Fault) { p.decide.Store(&decide) }

// Count reports how many requests met fault f.
func (p *Proxy) Count(f Fault) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[f]
}

// EveryNth returns a decision function that gives fault f to every nth request whose
// method is method ("" for any), and passes the rest.
func EveryNth(method string, n int64, f Fault) func(*http.Request) Fault {
	var seen atomic.Int64
	return func(r *http.Request) Fault {
		if method != "" && r.Method != method {
			return Pass
		}
		if seen.Add(1)%n == 0 {
			return f
		}
		return Pass
	}
}

var errCut = errors.New("s3test: connection cut mid-upload")

type cutReader struct {
	r    io.Reader
	left int64
}

func (c *cutReader) Read(b []byte) (int, error) {
	if c.left <= 0 {
		return 0, errCut
	}
	if int64(len(b)) > c.left {
		b = b[:c.left]
	}
	n, err := c.r.Read(b)
	c.left -= int64(n)
	return n, err
}

func s3ErrorResponse(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>%s</Code><Message>%s</Message><RequestId>shoal-test</RequestId></Error>`, code, strings.ReplaceAll(msg, "<", "&lt;"))
}
