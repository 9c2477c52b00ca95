package blob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/shoal-nix/shoal"
)

// s3Backend keeps objects in an S3-compatible bucket (AWS S3, R2, MinIO,
// Garage) under an optional key prefix, laid out like the file backend so a
// bucket can be served as-is by a CDN or read by a daemon directly.
//
// Every request is retried by the client with exponential backoff and
// jitter on 5xx, 429/SlowDown and broken connections; objects are written
// with a single PUT, which S3 makes visible whole or not at all, so a
// connection cut mid-upload never leaves a truncated object behind.
type s3Backend struct {
	client *minio.Client
	bucket string
	prefix string // "" or ends in "/"
	url    string
}

// openS3 parses "s3://bucket[/prefix][?region=R&endpoint=URL]". endpoint is
// "http://host:port" or "https://host[:port]" (a bare host means https);
// without it AWS S3 is used. Credentials come from the usual AWS chain:
// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), the shared
// credentials file (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE), then the
// instance or container role.
func openS3(u *url.URL) (*s3Backend, error) {
	if u.Host == "" {
		return nil, fmt.Errorf("blob: S3 URL %q names no bucket (want s3://bucket/prefix)", u.Redacted())
	}
	if u.User != nil {
		return nil, fmt.Errorf("blob: S3 URL for bucket %s: credentials in the URL are not supported; use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or ~/.aws/credentials", u.Host)
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("blob: S3 URL %q: fragments are not supported", u.String())
	}
	prefix := strings.Trim(u.Path, "/")
	if prefix != "" {
		if err := validatePath(prefix); err != nil {
			return nil, fmt.Errorf("blob: S3 URL %q: prefix: %w", u.String(), err)
		}
		prefix += "/"
	}
	q := u.Query()
	for k := range q {
		if k != "region" && k != "endpoint" {
			return nil, fmt.Errorf("blob: S3 URL %q: unknown parameter %q (want region, endpoint)", u.String(), k)
		}
	}
	region := q.Get("region")
	endpoint, secure, lookup := "s3.amazonaws.com", true, minio.BucketLookupAuto
	if e := q.Get("endpoint"); e != "" {
		if !strings.Contains(e, "://") {
			e = "https://" + e
		}
		eu, err := url.Parse(e)
		if err != nil || eu.Host == "" || (eu.Path != "" && eu.Path != "/") || eu.RawQuery != "" {
			return nil, fmt.Errorf("blob: S3 URL %q: endpoint %q must be http(s)://host[:port]", u.String(), q.Get("endpoint"))
		}
		switch eu.Scheme {
		case "http":
			secure = false
		case "https":
		default:
			return nil, fmt.Errorf("blob: S3 URL %q: endpoint scheme %q (want http or https)", u.String(), eu.Scheme)
		}
		// Servers other than AWS (MinIO, Garage, R2 with its account host) all
		// take path-style requests; virtual hosts need DNS set up per bucket.
		endpoint, lookup = eu.Host, minio.BucketLookupPath
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.ResponseHeaderTimeout = 60 * time.Second
	// A publish keeps many chunk writes in flight against one endpoint.
	t.MaxIdleConnsPerHost = 64
	creds := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
		&credentials.IAM{},
	})
	client, err := minio.New(endpoint, &minio.Options{
		Creds:        creds,
		Secure:       secure,
		Region:       region,
		BucketLookup: lookup,
		// A silent body must fail like one from an HTTP store, not hang its reader.
		Transport: StallTimeout(t, DefaultStallTimeout),
	})
	if err != nil {
		return nil, fmt.Errorf("blob: S3 client for %q: %w", u.String(), err)
	}
	canon := "s3://" + u.Host
	if prefix != "" {
		canon += "/" + strings.TrimSuffix(prefix, "/")
	}
	if len(q) > 0 {
		canon += "?" + q.Encode()
	}
	return &s3Backend{client: client, bucket: u.Host, prefix: prefix, url: canon}, nil
}

func (s *s3Backend) String() string { return s.url }

// s3Error wraps a client error, turning the S3 codes for an absent object
// into shoal.ErrNotFound. A missing bucket stays an error: it is a configuration
// mistake, not a miss.
func (s *s3Backend) s3Error(op, key string, err error) error {
	switch minio.ToErrorResponse(err).Code {
	case minio.NoSuchKey, "NotFound":
		return fmt.Errorf("%s %s in %s: %w", op, key, s.url, shoal.ErrNotFound)
	}
	return fmt.Errorf("%s %s in %s: %w", op, key, s.url, err)
}

func (s *s3Backend) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	obj, err := s.client.GetObject(ctx, s.bucket, s.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, s.s3Error("opening", key, err)
	}
	// GetObject is lazy; Stat sends the request so a miss is reported here
	// rather than on the first Read.
	if _, err := obj.Stat(); err != nil {
		obj.Close()
		return nil, s.s3Error("opening", key, err)
	}
	return s3Body{obj, s, key}, nil
}

// s3Body reports a miss met only while reading as shoal.ErrNotFound: minio-go may
// send the request again on the first Read, and the object may have been deleted
// since Stat, which a reader must tell from a broken store.
type s3Body struct {
	*minio.Object
	s   *s3Backend
	key string
}

func (b s3Body) Read(p []byte) (int, error) {
	n, err := b.Object.Read(p)
	if err != nil && err != io.EOF {
		if c := minio.ToErrorResponse(err).Code; c == minio.NoSuchKey || c == "NotFound" {
			err = b.s.s3Error("reading", b.key, err)
		}
	}
	return n, err
}

// OpenRange is a ranged GetObject. S3 answers a range that starts past the
// object's end with InvalidRange, reported as ErrRange.
func (s *s3Backend) OpenRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if err := checkRange(key, off, n); err != nil {
		return nil, err
	}
	var opts minio.GetObjectOptions
	if err := opts.SetRange(off, off+n-1); err != nil {
		return nil, fmt.Errorf("reading %d bytes at %d of %s in %s: %w", n, off, key, s.url, err)
	}
	obj, err := s.client.GetObject(ctx, s.bucket, s.prefix+key, opts)
	if err != nil {
		return nil, s.rangeError(key, off, n, err)
	}
	if _, err := obj.Stat(); err != nil {
		obj.Close()
		return nil, s.rangeError(key, off, n, err)
	}
	return newExactReader(s3Body{obj, s, key}, n, fmt.Sprintf("reading %d bytes at %d of %s in %s", n, off, key, s.url)), nil
}

func (s *s3Backend) rangeError(key string, off, n int64, err error) error {
	if minio.ToErrorResponse(err).Code == "InvalidRange" {
		return fmt.Errorf("reading %d bytes at %d of %s in %s: %w", n, off, key, s.url, ErrRange)
	}
	return s.s3Error(fmt.Sprintf("reading %d bytes at %d of", n, off), key, err)
}

func (s *s3Backend) Put(ctx context.Context, key string, data []byte) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	// One PUT (no multipart): S3 stores the object whole or not at all, and
	// a bytes.Reader lets the client rewind and resend on a retry.
	_, err := s.client.PutObject(ctx, s.bucket, s.prefix+key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{DisableMultipart: true, ContentType: "application/octet-stream"})
	if err != nil {
		return s.s3Error("storing", key, err)
	}
	return nil
}

func (s *s3Backend) Exists(ctx context.Context, key string) (bool, error) {
	_, err := s.Stat(ctx, key)
	if errors.Is(err, shoal.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (s *s3Backend) Stat(ctx context.Context, key string) (Info, error) {
	if err := ValidateKey(key); err != nil {
		return Info{}, err
	}
	oi, err := s.client.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return Info{}, s.s3Error("stat", key, err)
	}
	return Info{Size: oi.Size, ModTime: oi.LastModified}, nil
}

// Touch copies the object onto itself with new metadata, which S3 requires
// for a self-copy and which gives the object a new LastModified. The copy
// happens inside the server; no object bytes cross the network.
func (s *s3Backend) Touch(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	k := s.prefix + key
	_, err := s.client.CopyObject(ctx,
		minio.CopyDestOptions{Bucket: s.bucket, Object: k, ReplaceMetadata: true,
			UserMetadata: map[string]string{"Shoal-Touched": time.Now().UTC().Format(time.RFC3339)}},
		minio.CopySrcOptions{Bucket: s.bucket, Object: k})
	if err != nil {
		return s.s3Error("touching", key, err)
	}
	return nil
}

func (s *s3Backend) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if err := s.client.RemoveObject(ctx, s.bucket, s.prefix+key, minio.RemoveObjectOptions{}); err != nil {
		if errors.Is(s.s3Error("deleting", key, err), shoal.ErrNotFound) {
			return nil
		}
		return s.s3Error("deleting", key, err)
	}
	return nil
}

// List pages through the bucket listing (1000 keys a request); S3 returns
// keys in byte order, which is the order the interface promises.
func (s *s3Backend) List(ctx context.Context, prefix string, fn func(key string) error) error {
	if err := validatePrefix(prefix); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing goroutine when fn returns early
	for oi := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
		if oi.Err != nil {
			return fmt.Errorf("listing %q in %s: %w", prefix, s.url, oi.Err)
		}
		key := strings.TrimPrefix(oi.Key, s.prefix)
		if ValidateKey(key) != nil {
			continue // not something shoal could have written, e.g. "dir/" markers
		}
		if err := fn(key); err != nil {
			return err
		}
	}
	return ctx.Err()
}
