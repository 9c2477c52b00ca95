package blob_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/internal/s3test"
)

func TestOpenS3URL(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "x")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "y")
	tests := []struct {
		url, want, err string
	}{
		{url: "s3://bucket", want: "s3://bucket"},
		{url: "s3://bucket/", want: "s3://bucket"},
		{url: "s3://bucket/some/prefix/", want: "s3://bucket/some/prefix"},
		{url: "s3://bucket/p?region=eu-west-1", want: "s3://bucket/p?region=eu-west-1"},
		{url: "s3://bucket/p?endpoint=http://127.0.0.1:9000&region=us-east-1", want: "s3://bucket/p?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=us-east-1"},
		{url: "s3://bucket?endpoint=minio.example.org", want: "s3://bucket?endpoint=minio.example.org"},
		{url: "s3:///prefix", err: "names no bucket"},
		{url: "s3://key:secret@bucket", err: "credentials in the URL"},
		{url: "s3://bucket/a/../b", err: `".." segment`},
		{url: "s3://bucket?acl=public", err: `unknown parameter "acl"`},
		{url: "s3://bucket?endpoint=ftp://host", err: `endpoint scheme "ftp"`},
		{url: "s3://bucket?endpoint=http://host/path", err: "must be http(s)://host[:port]"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			b, err := blob.Open(tt.url, nil)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Open(%q) = %v, want error containing %q", tt.url, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("String() = %q, want %q", b.String(), tt.want)
			}
		})
	}
}

// TestBackendContract runs the same checks against every writable backend, so the
// S3 backend behaves exactly like the directory one that the rest of shoal was
// written against.
func TestBackendContract(t *testing.T) {
	backends := map[string]func(t *testing.T) blob.Backend{
		"file": func(t *testing.T) blob.Backend {
			b, err := blob.Open(t.TempDir(), nil)
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
		"s3": func(t *testing.T) blob.Backend {
			srv := s3test.Start(t)
			bucket := srv.Bucket(t, "contract")
			b, err := blob.Open(srv.URL(bucket, "some/prefix"), nil)
			if err != nil {
				t.Fatal(err)
			}
			// An object outside the prefix must stay invisible.
			outside, err := blob.Open(srv.URL(bucket, ""), nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := outside.Put(context.Background(), "chunks/zz/outside", []byte("x")); err != nil {
				t.Fatal(err)
			}
			return b
		},
	}
	for name, open := range backends {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			b := open(t)
			keys := []string{"chunks/ab/1", "chunks/ab/2", "chunks/cd/3", "m/x.manifest", "nix-cache-info", "x.narinfo"}
			for i, k := range keys {
				if err := b.Put(ctx, k, bytes.Repeat([]byte{byte(i)}, i+1)); err != nil {
					t.Fatal(err)
				}
			}
			var got []string
			if err := b.List(ctx, "", func(k string) error { got = append(got, k); return nil }); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, keys) {
				t.Errorf("List(\"\") = %q, want %q", got, keys)
			}
			got = nil
			if err := b.List(ctx, "chunks/ab/", func(k string) error { got = append(got, k); return nil }); err != nil {
				t.Fatal(err)
			}
			if want := keys[:2]; !slices.Equal(got, want) {
				t.Errorf("List(chunks/ab/) = %q, want %q", got, want)
			}
			stop := errors.New("stop")
			n := 0
			if err := b.List(ctx, "", func(string) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
				t.Errorf("List stopping early: err %v after %d keys", err, n)
			}

			rc, err := b.Open(ctx, "chunks/cd/3")
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(rc)
			rc.Close()
			if !bytes.Equal(data, []byte{2, 2, 2}) {
				t.Errorf("Open = %v", data)
			}
			if _, err := b.Open(ctx, "chunks/cd/absent"); !errors.Is(err, shoal.ErrNotFound) {
				t.Errorf("Open(absent) = %v, want shoal.ErrNotFound", err)
			}
			if ok, err := b.Exists(ctx, "x.narinfo"); !ok || err != nil {
				t.Errorf("Exists(x.narinfo) = %v, %v", ok, err)
			}
			if ok, err := b.Exists(ctx, "y.narinfo"); ok || err != nil {
				t.Errorf("Exists(y.narinfo) = %v, %v", ok, err)
			}

			before, err := b.Stat(ctx, "m/x.manifest")
			if err != nil {
				t.Fatal(err)
			}
			if before.Size != 4 || time.Since(before.ModTime) > time.Minute {
				t.Errorf("Stat = %+v, want size 4 and a recent time", before)
			}
			if _, err := b.Stat(ctx, "m/absent"); !errors.Is(err, shoal.ErrNotFound) {
				t.Errorf("Stat(absent) = %v, want shoal.ErrNotFound", err)
			}
			time.Sleep(1100 * time.Millisecond) // S3 times have one-second resolution
			if err := b.Touch(ctx, "m/x.manifest"); err != nil {
				t.Fatal(err)
			}
			after, err := b.Stat(ctx, "m/x.manifest")
			if err != nil {
				t.Fatal(err)
			}
			if !after.ModTime.After(before.ModTime) || after.Size != 4 {
				t.Errorf("after Touch: %+v, before: %+v", after, before)
			}
			rc, err = b.Open(ctx, "m/x.manifest")
			if err != nil {
				t.Fatal(err)
			}
			data, _ = io.ReadAll(rc)
			rc.Close()
			if !bytes.Equal(data, []byte{3, 3, 3, 3}) {
				t.Errorf("Touch changed the bytes: %v", data)
			}
			if err := b.Touch(ctx, "m/absent"); !errors.Is(err, shoal.ErrNotFound) {
				t.Errorf("Touch(absent) = %v, want shoal.ErrNotFound", err)
			}

			if err := b.Delete(ctx, "chunks/ab/1"); err != nil {
				t.Fatal(err)
			}
			if err := b.Delete(ctx, "chunks/ab/1"); err != nil {
				t.Errorf("deleting twice: %v", err)
			}
			if ok, _ := b.Exists(ctx, "chunks/ab/1"); ok {
				t.Error("deleted object still exists")
			}
			if err := b.Put(ctx, "../x", nil); err == nil {
				t.Error("Put accepted a key escaping the root")
			}
		})
	}
}

func TestHTTPBackendIsReadOnly(t *testing.T) {
	b, err := blob.Open("http://127.0.0.1:1/store", http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Delete(ctx, "x"); !errors.Is(err, blob.ErrReadOnly) {
		t.Errorf("Delete = %v, want ErrReadOnly", err)
	}
	if err := b.Touch(ctx, "x"); !errors.Is(err, blob.ErrReadOnly) {
		t.Errorf("Touch = %v, want ErrReadOnly", err)
	}
	if _, err := b.Stat(ctx, "x"); !errors.Is(err, blob.ErrNotSupported) {
		t.Errorf("Stat = %v, want ErrNotSupported", err)
	}
}

// TestS3Faults checks that the client's retries carry writes and reads through
// throttling, 5xx answers and connections cut mid-upload, and that a cut upload never
// leaves a partial object.
func TestS3Faults(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t, "faults")
	proxy := srv.NewProxy(t)
	b, err := blob.Open(s3test.URL(proxy.URL, bucket, ""), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, f := range []s3test.Fault{s3test.Throttle, s3test.Internal, s3test.Cut} {
		proxy.SetFaults(s3test.EveryNth("", 2, f))
		for i := range 6 {
			key := "obj/" + string(rune('a'+i))
			data := bytes.Repeat([]byte{byte(i)}, 100<<10)
			if err := b.Put(ctx, key, data); err != nil {
				t.Fatalf("fault %d: Put %s: %v", f, key, err)
			}
			got, err := blob.ReadAll(ctx, b, key, 1<<20)
			if err != nil {
				t.Fatalf("fault %d: reading %s: %v", f, key, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("fault %d: %s came back with %d bytes", f, key, len(got))
			}
		}
		if proxy.Count(f) == 0 {
			t.Fatalf("fault %d was never injected", f)
		}
	}
	// Every upload cut: the writer gives up, and no object appears.
	proxy.SetFaults(func(r *http.Request) s3test.Fault {
		if r.Method == http.MethodPut {
			return s3test.Cut
		}
		return s3test.Pass
	})
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := b.Put(cctx, "obj/never", bytes.Repeat([]byte{1}, 100<<10)); err == nil {
		t.Fatal("Put succeeded although every upload was cut")
	}
	if slices.Contains(srv.Keys(t, bucket), "obj/never") {
		t.Error("a cut upload left an object behind")
	}
}
