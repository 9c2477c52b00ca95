// Package nixcache speaks the Nix side of shoal, a Nix binary cache's protocol: it
// parses, verifies and rewrites narinfos, reads binary caches, decompresses their
// NARs, checks NAR bytes against what the narinfo promised, and serves a verified
// NAR over HTTP.
//
// Trust comes only from upstream signatures, so this package is deliberately
// strict about the signed fields and byte-preserving about everything else:
// a narinfo passed on to Nix must still verify under the upstream key.
package nixcache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

const (
	// DefaultUpstream is the binary cache substituted when none is configured.
	DefaultUpstream = "https://cache.nixos.org"
	// DefaultTrustedKey is cache.nixos.org's public signing key.
	DefaultTrustedKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="

	// StoreDir is the only store directory shoal serves; the signed
	// fingerprint contains full store paths, so it cannot be changed.
	StoreDir = "/nix/store"

	// MaxNarInfoSize bounds a narinfo; real ones are a few KiB even with
	// hundreds of references.
	MaxNarInfoSize = 64 << 10

	hashPartLen = 32 // nix32 of the 160-bit store path hash
)

// NarInfo is a parsed narinfo. Raw keeps the bytes as received because the
// signature covers only some fields and Nix must get the rest unchanged.
type NarInfo struct {
	Raw         []byte // exactly as received; Rewrite edits a copy
	StorePath   string // full /nix/store/<hash>-<name>
	URL         string
	Compression string // as written; "" when the line is missing
	FileHash    string
	FileSize    uint64
	NarHash     [32]byte // SHA-256 digest
	NarSize     uint64
	References  []string // base names
	Deriver     string
	Sigs        []string
	CA          string
}

// ParseNarInfo parses a narinfo, rejecting what Nix would reject for the
// fields shoal relies on: StorePath, URL, NarHash and NarSize are required,
// store paths must be well-formed and NarHash must be SHA-256. Unknown keys
// are ignored as Nix ignores them (they stay in Raw). A single-valued key
// given twice is an error: Nix would silently keep the last one, which makes
// two readers of the same bytes disagree.
func ParseNarInfo(raw []byte) (*NarInfo, error) {
	if len(raw) > MaxNarInfoSize {
		return nil, fmt.Errorf("narinfo is %d bytes, more than the limit of %d", len(raw), MaxNarInfoSize)
	}
	if len(raw) == 0 {
		return nil, errors.New("narinfo is empty")
	}
	if raw[len(raw)-1] != '\n' {
		return nil, errors.New("narinfo does not end with a newline")
	}
	n := &NarInfo{Raw: raw}
	seen := make(map[string]int) // key -> line number of first occurrence
	var haveNarHash, haveNarSize bool
	body := raw[:len(raw)-1]
	for i, lineBytes := range bytes.Split(body, []byte{'\n'}) {
		lineNo := i + 1
		line := string(lineBytes)
		key, value, ok := strings.Cut(line, ": ")
		if !ok || key == "" || strings.ContainsAny(key, " \t\r") {
			return nil, fmt.Errorf("narinfo line %d: %q is not a \"Key: value\" line", lineNo, truncate(line))
		}
		if key != "Sig" {
			if first, dup := seen[key]; dup && isKnownKey(key) {
				return nil, fmt.Errorf("narinfo line %d: duplicate %s (first on line %d)", lineNo, key, first)
			}
			seen[key] = lineNo
		}
		if err := n.setField(key, value, &haveNarHash, &haveNarSize); err != nil {
			return nil, fmt.Errorf("narinfo line %d: %s: %w", lineNo, key, err)
		}
	}
	switch {
	case n.StorePath == "":
		return nil, errors.New("narinfo has no StorePath")
	case n.URL == "":
		return nil, fmt.Errorf("narinfo for %s has no URL", n.StorePath)
	case !haveNarHash:
		return nil, fmt.Errorf("narinfo for %s has no NarHash", n.StorePath)
	case !haveNarSize:
		return nil, fmt.Errorf("narinfo for %s has no NarSize", n.StorePath)
	}
	return n, nil
}

func isKnownKey(key string) bool {
	switch key {
	case "StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize", "References", "Deriver", "Sig", "CA":
		return true
	}
	return false
}

func (n *NarInfo) setField(key, value string, haveNarHash, haveNarSize *bool) error {
	switch key {
	case "StorePath":
		base, ok := strings.CutPrefix(value, StoreDir+"/")
		if !ok {
			return fmt.Errorf("%q is not under %s", truncate(value), StoreDir)
		}
		if err := validateBaseName(base); err != nil {
			return err
		}
		n.StorePath = value
	case "URL":
		if value == "" {
			return errors.New("empty value")
		}
		n.URL = value
	case "Compression":
		n.Compression = value
	case "FileHash":
		n.FileHash = value
	case "FileSize":
		size, err := strconv.ParseUint(value, 10, 64)
		if err != nil {
			return fmt.Errorf("invalid size %q", truncate(value))
		}
		n.FileSize = size
	case "NarHash":
		h, err := parseSHA256(value)
		if err != nil {
			return err
		}
		n.NarHash = h
		*haveNarHash = true
	case "NarSize":
		size, err := strconv.ParseUint(value, 10, 64)
		if err != nil {
			return fmt.Errorf("invalid size %q", truncate(value))
		}
		if size == 0 {
			// Nix treats a zero NarSize as a corrupt narinfo; no NAR is empty.
			return errors.New("size is zero")
		}
		n.NarSize = size
		*haveNarSize = true
	case "References":
		refs := strings.Fields(value)
		for _, r := range refs {
			if err := validateBaseName(r); err != nil {
				return err
			}
		}
		n.References = refs
	case "Deriver":
		if value != "unknown-deriver" {
			if err := validateBaseName(value); err != nil {
				return err
			}
		}
		n.Deriver = value
	case "Sig":
		n.Sigs = append(n.Sigs, value)
	case "CA":
		n.CA = value
	}
	return nil
}

// parseSHA256 accepts "sha256:" followed by nix32 (52 characters) or base16
// (64 characters), the two forms Nix writes into narinfos.
func parseSHA256(value string) ([32]byte, error) {
	var out [32]byte
	algo, digest, ok := strings.Cut(value, ":")
	if !ok {
		return out, fmt.Errorf("%q has no algorithm prefix", truncate(value))
	}
	if algo != "sha256" {
		return out, fmt.Errorf("unsupported hash algorithm %q (want sha256)", truncate(algo))
	}
	switch len(digest) {
	case nixbase32.EncodedLen(sha256.Size):
		b, err := nixbase32.DecodeString(digest)
		if err != nil || len(b) != sha256.Size {
			return out, fmt.Errorf("invalid nix32 digest %q: %w", digest, err)
		}
		copy(out[:], b)
	case hex.EncodedLen(sha256.Size):
		b, err := hex.DecodeString(digest)
		if err != nil {
			return out, fmt.Errorf("invalid base16 digest %q: %w", digest, err)
		}
		copy(out[:], b)
	default:
		return out, fmt.Errorf("digest %q has %d characters, want 52 (nix32) or 64 (base16)", truncate(digest), len(digest))
	}
	return out, nil
}

// validateBaseName checks "<hash>-<name>" the way Nix's store path parser
// does: a 32-character nix32 hash, a dash, and a non-empty name of at most
// 211 characters from Nix's allowed set, not starting with a dot.
func validateBaseName(base string) error {
	if len(base) < hashPartLen+2 || base[hashPartLen] != '-' {
		return fmt.Errorf("%q is not a store path base name <hash>-<name>", truncate(base))
	}
	if err := validateHashPart(base[:hashPartLen]); err != nil {
		return fmt.Errorf("store path %q: %w", truncate(base), err)
	}
	name := base[hashPartLen+1:]
	if len(name) > 211 {
		return fmt.Errorf("store path %q: name longer than 211 characters", truncate(base))
	}
	if name[0] == '.' {
		return fmt.Errorf("store path %q: name starts with a dot", truncate(base))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("+-._?=", c) >= 0) {
			return fmt.Errorf("store path %q: invalid character %q in name", truncate(base), c)
		}
	}
	return nil
}

func validateHashPart(h string) error {
	if len(h) != hashPartLen {
		return fmt.Errorf("hash part %q has %d characters, want %d", truncate(h), len(h), hashPartLen)
	}
	for i := 0; i < len(h); i++ {
		if !nixbase32.Is(h[i]) {
			return fmt.Errorf("hash part %q: %q is not a nix32 character", h, h[i])
		}
	}
	return nil
}

// ParseHashPart extracts the 32-character hash part from "<hash>",
// "<hash>-name" or "/nix/store/<hash>-name", which is what users type and
// what narinfo file names are made of.
func ParseHashPart(s string) (string, error) {
	rest := strings.TrimPrefix(s, StoreDir+"/")
	if len(rest) < hashPartLen {
		return "", fmt.Errorf("%q is too short for a store path hash", truncate(s))
	}
	h := rest[:hashPartLen]
	if len(rest) > hashPartLen {
		if rest[hashPartLen] != '-' || len(rest) == hashPartLen+1 {
			return "", fmt.Errorf("%q is not <hash>, <hash>-<name> or %s/<hash>-<name>", truncate(s), StoreDir)
		}
	}
	if err := validateHashPart(h); err != nil {
		return "", fmt.Errorf("parsing %q: %w", truncate(s), err)
	}
	return h, nil
}

// HashPart returns the 32-character hash part of StorePath, which names the
// narinfo in a binary cache.
func (n *NarInfo) HashPart() string {
	base := strings.TrimPrefix(n.StorePath, StoreDir+"/")
	if len(base) < hashPartLen {
		return base
	}
	return base[:hashPartLen]
}

// EffectiveCompression applies Nix's rule that a narinfo without a
// Compression line describes a bzip2-compressed NAR.
func (n *NarInfo) EffectiveCompression() string {
	if n.Compression == "" {
		return "bzip2"
	}
	return n.Compression
}

// NarHashString returns NarHash in the "sha256:<nix32>" form the signed
// fingerprint uses, whatever form the narinfo was written in.
func (n *NarInfo) NarHashString() string {
	return "sha256:" + nixbase32.EncodeToString(n.NarHash[:])
}

// Fingerprint returns the string the upstream signed:
// "1;<StorePath>;sha256:<nix32>;<NarSize>;<sorted full reference paths>".
func (n *NarInfo) Fingerprint() string {
	refs := make([]string, len(n.References))
	for i, r := range n.References {
		refs[i] = StoreDir + "/" + r
	}
	sort.Strings(refs)
	return "1;" + n.StorePath + ";" + n.NarHashString() + ";" + strconv.FormatUint(n.NarSize, 10) + ";" + strings.Join(refs, ",")
}

// Rewrite returns a copy of n.Raw that points Nix at narURL for an
// uncompressed NAR: URL is set to narURL, Compression to "none", FileHash
// to NarHashString() and FileSize to NarSize, because the file shoal serves
// is the NAR itself. Missing lines among these are added right after the URL
// line (a missing Compression would otherwise mean bzip2). None of these
// fields is signed; every other line, including unknown keys and Sig lines,
// is kept byte-identical and in order, so the result verifies exactly as the
// original did.
func Rewrite(n *NarInfo, narURL string) []byte {
	replacements := []struct {
		key, line string
		done      bool
	}{
		{key: "URL", line: "URL: " + narURL},
		{key: "Compression", line: "Compression: none"},
		{key: "FileHash", line: "FileHash: " + n.NarHashString()},
		{key: "FileSize", line: "FileSize: " + strconv.FormatUint(n.NarSize, 10)},
	}
	body := bytes.TrimSuffix(n.Raw, []byte{'\n'})
	var lines []string
	if len(body) > 0 {
		lines = strings.Split(string(body), "\n")
	}
	out := make([]string, 0, len(lines)+len(replacements))
	urlAt := -1
	for _, line := range lines {
		key, _, _ := strings.Cut(line, ":")
		replaced := false
		for i := range replacements {
			r := &replacements[i]
			if key == r.key && !r.done {
				out = append(out, r.line)
				r.done = true
				replaced = true
				if key == "URL" {
					urlAt = len(out)
				}
				break
			}
		}
		if replaced {
			continue
		}
		if _, ok := isReplacedKey(key); ok {
			// A repeated replaced key would contradict the value set
			// above; Nix would take the last one, so drop it.
			continue
		}
		out = append(out, line)
	}
	var missing []string
	for _, r := range replacements {
		if !r.done {
			missing = append(missing, r.line)
		}
	}
	if urlAt < 0 {
		urlAt = len(out)
	}
	out = append(out[:urlAt], append(missing, out[urlAt:]...)...)
	return []byte(strings.Join(out, "\n") + "\n")
}

func isReplacedKey(key string) (string, bool) {
	switch key {
	case "URL", "Compression", "FileHash", "FileSize":
		return key, true
	}
	return "", false
}

// truncate keeps error messages readable when fed hostile input.
func truncate(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
