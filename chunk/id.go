package chunk

import (
	"encoding/hex"
	"fmt"

	"github.com/zeebo/blake3"
)

// ID is the BLAKE3-256 (github.com/zeebo/blake3) of a chunk's uncompressed
// bytes. Hashing the raw bytes rather than the stored object keeps the name
// independent of the compressor, so a chunk keeps its ID whatever zstd
// version or level produced its frame.
type ID [32]byte

// Sum returns the ID of a chunk.
func Sum(data []byte) ID {
	return ID(blake3.Sum256(data))
}

// String returns the ID as 64 lowercase hex characters, the form used in
// store keys and logs.
func (id ID) String() string {
	return hex.EncodeToString(id[:])
}

// ParseID is the strict inverse of String: exactly 64 hex characters. Upper
// case is accepted by the hex decoder but rejected here, so that one ID has
// exactly one spelling and store keys cannot alias.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*len(id) {
		return ID{}, fmt.Errorf("parsing chunk ID %q: want %d hex characters, got %d", s, 2*len(id), len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return ID{}, fmt.Errorf("parsing chunk ID %q: character %q at %d is not lowercase hex", s, c, i)
		}
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return ID{}, fmt.Errorf("parsing chunk ID %q: %w", s, err)
	}
	return id, nil
}
