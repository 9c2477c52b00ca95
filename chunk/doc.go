// Package chunk defines shoal's chunk format: how a NAR is cut into pieces
// (canonical FastCDC-2020), how a piece is named (BLAKE3-256 of its bytes) and
// how it is stored (one zstd frame).
//
// Everything here is part of the published format. Chunks cut, named or
// framed differently do not deduplicate against data that is already
// published, so the golden vectors in the tests must never change for an
// existing chunker identity; see docs/format.md.
package chunk
