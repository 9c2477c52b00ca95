package localcache

// chunkID is the chunk identifier (BLAKE3-256 of the uncompressed bytes).
// It stands in for chunk.ID until that package lands; both are [32]byte
// underneath, so values convert freely.
type chunkID = [32]byte
