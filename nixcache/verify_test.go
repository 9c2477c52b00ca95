package nixcache

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestVerifyingReader(t *testing.T) {
	nar := narLike(200<<10, 8)
	sum := sha256.Sum256(nar)
	flipped := bytes.Clone(nar)
	flipped[len(flipped)/2] ^= 1
	tests := []struct {
		name     string
		input    []byte
		hash     [32]byte
		size     uint64
		wantErr  string // "" means a clean EOF
		maxBytes int    // bytes that may be passed through, -1 for all
	}{
		{name: "match", input: nar, hash: sum, size: uint64(len(nar)), maxBytes: -1},
		{name: "short", input: nar[:len(nar)-1], hash: sum, size: uint64(len(nar)), wantErr: "NarSize says", maxBytes: -1},
		{name: "empty", input: nil, hash: sum, size: uint64(len(nar)), wantErr: "0 bytes", maxBytes: -1},
		{name: "long", input: append(bytes.Clone(nar), 'x'), hash: sum, size: uint64(len(nar)), wantErr: "longer than its NarSize", maxBytes: len(nar)},
		{name: "much longer", input: append(bytes.Clone(nar), nar...), hash: sum, size: uint64(len(nar)), wantErr: "longer than its NarSize", maxBytes: len(nar)},
		{name: "wrong bytes, right size", input: flipped, hash: sum, size: uint64(len(nar)), wantErr: "NarHash says", maxBytes: -1},
		{name: "wrong expected hash", input: nar, hash: sha256.Sum256([]byte("other")), size: uint64(len(nar)), wantErr: "NarHash says", maxBytes: -1},
	}
	readers := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"plain", func(r io.Reader) io.Reader { return r }},
		{"one byte", iotest.OneByteReader},
		{"data with EOF", iotest.DataErrReader},
	}
	for _, tt := range tests {
		for _, rd := range readers {
			t.Run(tt.name+"/"+rd.name, func(t *testing.T) {
				vr := NewVerifyingReader(rd.wrap(bytes.NewReader(tt.input)), tt.hash, tt.size)
				got, err := io.ReadAll(vr)
				if tt.wantErr == "" {
					if err != nil {
						t.Fatalf("ReadAll: %v", err)
					}
					if !bytes.Equal(got, tt.input) {
						t.Fatal("bytes changed in transit")
					}
				} else {
					if !errors.Is(err, ErrNarMismatch) || !strings.Contains(err.Error(), tt.wantErr) {
						t.Fatalf("error = %v, want ErrNarMismatch containing %q", err, tt.wantErr)
					}
				}
				if tt.maxBytes >= 0 && len(got) > tt.maxBytes {
					t.Errorf("passed through %d bytes, more than NarSize %d", len(got), tt.maxBytes)
				}
				// The verdict is sticky.
				if _, err2 := vr.Read(make([]byte, 10)); (err2 == io.EOF) != (tt.wantErr == "") {
					t.Errorf("second Read after end = %v", err2)
				}
			})
		}
	}
}

func TestVerifyingReaderPassesInputErrors(t *testing.T) {
	errBroken := errors.New("broken pipe")
	vr := NewVerifyingReader(io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(errBroken)), [32]byte{}, 10)
	if _, err := io.ReadAll(vr); !errors.Is(err, errBroken) || errors.Is(err, ErrNarMismatch) {
		t.Errorf("error = %v, want the input's error", err)
	}
}
