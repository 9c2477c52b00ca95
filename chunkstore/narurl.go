package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
)

// NarURLPrefix holds the NAR URL index: for each published narinfo, an object named
// after the URL its narinfo gives for the NAR file, holding the narinfo's hash part.
// `shoal serve` answers requests for the original NAR URLs (clients cache narinfos for
// weeks, so the URLs must keep working after the NAR files are gone) and finds the
// narinfo with one read instead of a listing of the store.
const NarURLPrefix = "nar-urls/"

// maxNarURLObjectSize bounds an index object: a hash part and a newline.
const maxNarURLObjectSize = 1 << 10

// NarURLKey names the index object of a NAR URL (relative to the binary cache root, as
// narinfos write it), or fails for a URL that cannot be a key: absolute URLs, "..",
// empty segments.
func NarURLKey(narURL string) (string, error) {
	if strings.Contains(narURL, "://") {
		return "", fmt.Errorf("NAR URL %q is absolute; only URLs relative to the cache are indexed", narURL)
	}
	if err := blob.ValidateKey(narURL); err != nil {
		return "", fmt.Errorf("NAR URL %q: %w", narURL, err)
	}
	return NarURLPrefix + narURL, nil
}

// PutNarURL records that narURL is the NAR of the narinfo hashPart. Publish writes it
// after the manifest and before the narinfo, so an index object whose narinfo is
// absent means an interrupted publish (readers treat it as a miss), and a narinfo in
// the store always has its index object.
func (s *Store) PutNarURL(ctx context.Context, narURL, hashPart string) error {
	key, err := NarURLKey(narURL)
	if err != nil {
		return err
	}
	if err := s.b.Put(ctx, key, []byte(hashPart+"\n")); err != nil {
		return fmt.Errorf("writing NAR URL index %s to %s: %w", key, s.b, err)
	}
	return nil
}

// NarURL returns the hash part of the narinfo whose NAR is at narURL; the error wraps
// shoal.ErrNotFound when the URL is not indexed. The answer is only a pointer: the caller
// reads that narinfo and checks that its URL is narURL.
func (s *Store) NarURL(ctx context.Context, narURL string) (string, error) {
	key, err := NarURLKey(narURL)
	if err != nil {
		return "", fmt.Errorf("%w: %w", shoal.ErrNotFound, err)
	}
	raw, err := blob.ReadAll(ctx, s.b, key, maxNarURLObjectSize)
	if err != nil {
		return "", fmt.Errorf("reading NAR URL index %s from %s: %w", key, s.b, err)
	}
	hp, ok := ParseNarInfoKey(string(bytes.TrimSuffix(raw, []byte("\n"))) + narInfoSuffix)
	if !ok || !bytes.HasSuffix(raw, []byte("\n")) {
		return "", fmt.Errorf("NAR URL index %s in %s does not hold a store path hash", key, s.b)
	}
	return hp, nil
}

// HasNarURL reports whether narURL is indexed (to hashPart or another narinfo whose
// NAR has the same URL, which means the same file).
func (s *Store) HasNarURL(ctx context.Context, narURL string) (bool, error) {
	_, err := s.NarURL(ctx, narURL)
	if errors.Is(err, shoal.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}
