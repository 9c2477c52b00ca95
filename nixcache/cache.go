package nixcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/shoal-nix/shoal/blob"
)

// BinaryCache reads a Nix binary cache (file:// or http(s)://) through a
// blob.Backend: narinfos at the root, NARs wherever their URL points.
type BinaryCache struct {
	b blob.Backend
}

// NewBinaryCache returns a cache reader over b.
func NewBinaryCache(b blob.Backend) *BinaryCache {
	return &BinaryCache{b: b}
}

// String returns the cache's URL.
func (c *BinaryCache) String() string { return c.b.String() }

// NarInfo fetches and parses <hashPart>.narinfo. A miss wraps
// shoal.ErrNotFound. The narinfo is not signature-checked here (see
// Keyring.Verify), but a narinfo for another store path is rejected, as Nix
// rejects it.
func (c *BinaryCache) NarInfo(ctx context.Context, hashPart string) (*NarInfo, error) {
	if err := validateHashPart(hashPart); err != nil {
		return nil, fmt.Errorf("looking up narinfo in %s: %w", c.b, err)
	}
	key := hashPart + ".narinfo"
	raw, err := blob.ReadAll(ctx, c.b, key, MaxNarInfoSize)
	if err != nil {
		return nil, fmt.Errorf("fetching %s from %s: %w", key, c.b, err)
	}
	n, err := ParseNarInfo(raw)
	if err != nil {
		return nil, fmt.Errorf("parsing %s from %s: %w", key, c.b, err)
	}
	if n.HashPart() != hashPart {
		return nil, fmt.Errorf("%s from %s describes %s, not %s", key, c.b, n.StorePath, hashPart)
	}
	return n, nil
}

// OpenNAR opens the file n.URL points to, relative to the cache root, and
// returns the decompressed NAR per n.EffectiveCompression(). The bytes are
// not checked: wrap the result with NewVerifyingReader. Closing the result
// closes the underlying file or connection too.
func (c *BinaryCache) OpenNAR(ctx context.Context, n *NarInfo) (io.ReadCloser, error) {
	if strings.Contains(n.URL, "://") {
		return nil, fmt.Errorf("NAR of %s: absolute NAR URL %q is not supported", n.StorePath, truncate(n.URL))
	}
	if err := blob.ValidateKey(n.URL); err != nil {
		return nil, fmt.Errorf("NAR of %s: %w", n.StorePath, err)
	}
	rc, err := c.b.Open(ctx, n.URL)
	if err != nil {
		return nil, fmt.Errorf("opening NAR of %s: %w", n.StorePath, err)
	}
	d, err := Decompress(ctx, rc, n.EffectiveCompression())
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("opening NAR of %s from %s: %w", n.StorePath, c.b, err)
	}
	return &stackedCloser{Reader: d, closers: []io.Closer{d, rc}}, nil
}

// stackedCloser closes a decoder and then the stream under it.
type stackedCloser struct {
	io.Reader
	closers []io.Closer
}

func (s *stackedCloser) Close() error {
	var errs []error
	for _, c := range s.closers {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// List calls fn with the hash part of every narinfo at the cache root.
// Only listable backends (directories) support it; others return an error
// wrapping blob.ErrNotSupported.
func (c *BinaryCache) List(ctx context.Context, fn func(hashPart string) error) error {
	err := c.b.List(ctx, "", func(key string) error {
		h, ok := strings.CutSuffix(key, ".narinfo")
		if !ok || strings.Contains(h, "/") || validateHashPart(h) != nil {
			return nil
		}
		return fn(h)
	})
	if err != nil {
		return fmt.Errorf("listing narinfos in %s: %w", c.b, err)
	}
	return nil
}
