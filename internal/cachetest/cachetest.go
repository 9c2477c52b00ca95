// Package cachetest writes small signed Nix binary caches from Go, for unit tests and
// benchmarks that need a cache but not a Nix installation. End-to-end tests use a real
// Nix instead (internal/nixtest); the narinfos written here follow the same format and
// are checked by the same parser and signature code.
package cachetest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/ulikunitz/xz"
)

// Cache is a binary cache directory and the key that signs it.
type Cache struct {
	Dir       string
	PublicKey string
	sk        signature.SecretKey
}

// New makes an empty cache in a temporary directory.
func New(t testing.TB, keyName string) *Cache {
	t.Helper()
	sk, pk, err := signature.GenerateKeypair(keyName, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "nar"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return &Cache{Dir: dir, PublicKey: pk.String(), sk: sk}
}

// Add stores nar (any bytes: shoal never parses NARs) as store path hashPart-name with
// compression "none", "zstd" or "xz", signs it, and returns the parsed narinfo.
func (c *Cache) Add(t testing.TB, hashPart, name string, nar []byte, compression string) *nixcache.NarInfo {
	t.Helper()
	file := nar
	switch compression {
	case "none":
	case "zstd":
		enc, err := zstd.NewWriter(nil)
		if err != nil {
			t.Fatal(err)
		}
		file = enc.EncodeAll(nar, nil)
		enc.Close()
	case "xz":
		var buf bytes.Buffer
		w, err := xz.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(nar); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		file = buf.Bytes()
	default:
		t.Fatalf("cachetest: unsupported compression %q", compression)
	}
	narHash := sha256.Sum256(nar)
	fileHash := sha256.Sum256(file)
	fileName := nixbase32.EncodeToString(fileHash[:]) + ".nar"
	switch compression {
	case "zstd":
		fileName += ".zst"
	case "xz":
		fileName += ".xz"
	}
	if err := os.WriteFile(filepath.Join(c.Dir, "nar", fileName), file, 0o644); err != nil {
		t.Fatal(err)
	}
	storePath := "/nix/store/" + hashPart + "-" + name
	narHashStr := "sha256:" + nixbase32.EncodeToString(narHash[:])
	fp := fmt.Sprintf("1;%s;%s;%d;", storePath, narHashStr, len(nar))
	sig, err := c.sk.Sign(rand.Reader, fp)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "StorePath: %s\nURL: nar/%s\nCompression: %s\nFileHash: sha256:%s\nFileSize: %d\nNarHash: %s\nNarSize: %d\nReferences: \nSig: %s\n",
		storePath, fileName, compression, nixbase32.EncodeToString(fileHash[:]), len(file), narHashStr, len(nar), sig.String())
	if err := os.WriteFile(filepath.Join(c.Dir, hashPart+".narinfo"), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	ni, err := nixcache.ParseNarInfo(b.Bytes())
	if err != nil {
		t.Fatalf("cachetest wrote a narinfo shoal cannot parse: %v\n%s", err, b.Bytes())
	}
	return ni
}

// HashPart makes a valid 32-character store path hash from a seed.
func HashPart(seed string) string {
	h := sha256.Sum256([]byte(seed))
	return nixbase32.EncodeToString(h[:20])
}
