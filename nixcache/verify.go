package nixcache

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// ErrNarMismatch reports NAR bytes that differ from the narinfo's NarHash
// or NarSize. Such bytes must never reach Nix.
var ErrNarMismatch = errors.New("NAR does not match its narinfo")

// verifyingReader hashes and counts what passes through it and replaces the
// final io.EOF with an error when the NAR is not the one the narinfo
// describes.
type verifyingReader struct {
	r       io.Reader
	h       hash.Hash
	n       uint64
	narHash [32]byte
	narSize uint64
	err     error // sticky once the stream has ended or failed verification
}

// NewVerifyingReader passes r through while computing its SHA-256 and
// length. At the end it returns io.EOF only if both match narHash and
// narSize; otherwise an error wrapping ErrNarMismatch. It fails as soon as
// more than narSize bytes arrive, without passing the excess on, so an
// oversized body is caught before it is buffered or forwarded.
func NewVerifyingReader(r io.Reader, narHash [32]byte, narSize uint64) io.Reader {
	return &verifyingReader{r: r, h: sha256.New(), narHash: narHash, narSize: narSize}
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	if n > 0 {
		if rest := v.narSize - v.n; uint64(n) > rest {
			n = int(rest)
			v.err = fmt.Errorf("NAR is longer than its NarSize of %d bytes: %w", v.narSize, ErrNarMismatch)
			err = v.err
		}
		v.h.Write(p[:n])
		v.n += uint64(n)
	}
	if err == io.EOF {
		v.err = v.check()
		err = v.err
	}
	return n, err
}

func (v *verifyingReader) check() error {
	if v.n != v.narSize {
		return fmt.Errorf("NAR is %d bytes, its NarSize says %d: %w", v.n, v.narSize, ErrNarMismatch)
	}
	var sum [32]byte
	v.h.Sum(sum[:0])
	if sum != v.narHash {
		return fmt.Errorf("NAR hashes to sha256:%s, its NarHash says sha256:%s: %w",
			nixbase32.EncodeToString(sum[:]), nixbase32.EncodeToString(v.narHash[:]), ErrNarMismatch)
	}
	return io.EOF
}
