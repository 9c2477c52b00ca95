// Package blob stores and fetches opaque objects by key, so that the rest of
// shoal does not care whether bytes live in a local directory or behind an
// HTTP server (a CDN, a plain binary cache). Keys are relative slash-separated
// paths such as "nix-cache-info", "abc.narinfo" or "chunks/ab/<hex>".
package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"time"
)

// ErrReadOnly reports a write to a backend that cannot be written to.
var ErrReadOnly = errors.New("blob: backend is read-only")

// ErrRange reports a ranged read that starts at or past the end of the object:
// the object is shorter than whoever asked believed, which for a pack means
// the location came from a stale or lying manifest.
var ErrRange = errors.New("blob: range outside the object")

// ErrNotSupported reports an operation the backend cannot perform, such as
// listing an HTTP server.
var ErrNotSupported = errors.New("blob: operation not supported by this backend")

// Backend is one place where objects live.
type Backend interface {
	// Open streams one object. The error wraps shoal.ErrNotFound when the object
	// is absent.
	Open(ctx context.Context, key string) (io.ReadCloser, error)
	// OpenRange streams n bytes of an object starting at byte off, so a
	// reader of a pack file fetches the objects it needs and not the pack.
	// The reader yields exactly n bytes or fails (io.ErrUnexpectedEOF when
	// the object ends first); the error wraps shoal.ErrNotFound when the object is
	// absent and ErrRange when it does not reach off.
	OpenRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error)
	// Put stores an object atomically: a concurrent reader sees either the
	// whole object or nothing, never a prefix.
	Put(ctx context.Context, key string, data []byte) error
	// Exists reports whether the object is present.
	Exists(ctx context.Context, key string) (bool, error)
	// List calls fn for every key starting with prefix, in sorted order, and
	// stops at the first error fn returns.
	List(ctx context.Context, prefix string, fn func(key string) error) error
	// Stat returns an object's size and modification time; the error wraps
	// shoal.ErrNotFound when it is absent. Garbage collection uses the time to
	// spare objects a running publish may still need.
	Stat(ctx context.Context, key string) (Info, error)
	// Touch sets an object's modification time to now without changing its
	// bytes, and wraps shoal.ErrNotFound when the object is absent. A publish
	// touches every chunk it reuses, so that a concurrent garbage collection
	// sees it as young and spares it.
	Touch(ctx context.Context, key string) error
	// Delete removes an object. Deleting an absent object is not an error,
	// so an interrupted collection can simply be run again.
	Delete(ctx context.Context, key string) error
	// String returns the backend's URL, for logs and errors.
	String() string
}

// Info describes a stored object.
type Info struct {
	Size    int64
	ModTime time.Time
}

// Open returns the backend for rawURL: "file:///abs/dir", a bare absolute
// or relative directory path, "http://host[:port][/prefix]", "https://..."
// or "s3://bucket[/prefix][?region=R&endpoint=URL]" (see openS3). A nil
// client gets DefaultHTTPClient; S3 backends use their own transport.
func Open(rawURL string, client *http.Client) (Backend, error) {
	if rawURL == "" {
		return nil, errors.New("blob: empty store URL")
	}
	if !strings.Contains(rawURL, "://") {
		return newFileBackend(rawURL)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("blob: parsing store URL %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("blob: file URL %q must have an empty host (use file:///abs/dir)", rawURL)
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("blob: file URL %q: query parameters are not supported", rawURL)
		}
		if u.Path == "" {
			return nil, fmt.Errorf("blob: file URL %q has no path", rawURL)
		}
		return newFileBackend(filepath.FromSlash(u.Path))
	case "http", "https":
		if client == nil {
			client = DefaultHTTPClient()
		}
		return newHTTPBackend(u, client)
	case "s3":
		return openS3(u)
	default:
		return nil, fmt.Errorf("blob: unsupported store URL scheme %q in %q (want file://, http://, https://, s3:// or a directory path)", u.Scheme, rawURL)
	}
}

// ReadAll reads a whole object into memory, refusing objects larger than max
// so that a broken or hostile server cannot exhaust memory.
func ReadAll(ctx context.Context, b Backend, key string, max int64) ([]byte, error) {
	if max < 0 {
		return nil, fmt.Errorf("blob: reading %s from %s: negative size limit %d", key, b, max)
	}
	rc, err := b.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, fmt.Errorf("blob: reading %s from %s: %w", key, b, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("blob: object %s in %s is larger than the limit of %d bytes", key, b, max)
	}
	return data, nil
}

// ValidateKey rejects keys that could escape the store's root or mean
// different things on different backends: empty keys, absolute paths, ".."
// or "." segments, empty segments and backslashes.
func ValidateKey(key string) error {
	if key == "" {
		return errors.New("blob: empty key")
	}
	if err := validatePath(key); err != nil {
		return err
	}
	if strings.HasSuffix(key, "/") {
		return fmt.Errorf("blob: invalid key %q: trailing slash", key)
	}
	return nil
}

// validatePrefix accepts the empty prefix and prefixes ending in "/" on top
// of what ValidateKey accepts.
func validatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	return validatePath(strings.TrimSuffix(prefix, "/"))
}

func validatePath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("blob: invalid key %q: empty", p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("blob: invalid key %q: leading slash", p)
	case strings.ContainsRune(p, '\\'):
		return fmt.Errorf("blob: invalid key %q: backslash", p)
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("blob: invalid key %q: NUL byte", p)
	}
	for _, seg := range strings.Split(p, "/") {
		switch seg {
		case "":
			return fmt.Errorf("blob: invalid key %q: empty path segment", p)
		case ".", "..":
			return fmt.Errorf("blob: invalid key %q: %q segment", p, seg)
		}
	}
	return nil
}
