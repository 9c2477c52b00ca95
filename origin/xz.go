package origin

import (
	"encoding/binary"
	"hash/crc32"
)

// The xz bodies shoal serve sends hold the NAR in LZMA2 "uncompressed" chunks inside one
// xz block with no integrity check. Nix checks NarHash after decompressing and never
// FileHash, so the file need not match the cache's original; what matters is that
// every xz decoder accepts it, that it costs nothing to make, and that it is the same
// bytes every time, so a CDN or client can resume with a Range request. This layout
// is all three: its framing depends only on NarSize, which also makes its length (and
// where any NAR byte lands in it) known before the first byte is sent. The price is
// size on the wire: the NAR plus 3 bytes per 64 KiB. BenchmarkXZ measures the
// alternatives (xz -0, a Go LZMA encoder), which are much slower per core.
//
// Layout (https://tukaani.org/xz/xz-file-format.txt):
//
//	stream header  12 bytes: magic, flags (check None), CRC32 of the flags
//	block header   12 bytes: size, flags, one LZMA2 filter with a 64 KiB dictionary, padding, CRC32
//	LZMA2 data     per 64 KiB of NAR: control byte (1 = dictionary reset, first chunk;
//	               2 = no reset), size-1 big-endian in 2 bytes, the bytes; then 0x00
//	block padding  to a multiple of 4
//	index          indicator, record count, unpadded and uncompressed size, padding, CRC32
//	stream footer  12 bytes: CRC32, backward size, flags, magic
const (
	xzPieceSize    = 64 << 10
	xzPieceHeader  = 3
	xzStreamHeader = 12
	xzBlockHeader  = 12
	xzPrefix       = xzStreamHeader + xzBlockHeader
)

// xzStreamFlags: no check. Check None is valid xz, and NarHash is the check that counts.
var xzStreamFlags = [2]byte{0x00, 0x00}

// xzHeader returns the stream header and block header.
func xzHeader() []byte {
	b := make([]byte, 0, xzPrefix)
	b = append(b, 0xFD, '7', 'z', 'X', 'Z', 0x00)
	b = append(b, xzStreamFlags[:]...)
	b = binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(xzStreamFlags[:]))
	// Block header: size byte ((12/4)-1), flags (one filter, no sizes), filter ID 0x21
	// (LZMA2), 1 byte of properties: dictionary size 64 KiB (encoded 8), one byte of
	// padding, CRC32.
	bh := []byte{xzBlockHeader/4 - 1, 0x00, 0x21, 0x01, 0x08, 0x00, 0x00, 0x00}
	b = append(b, bh...)
	return binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(bh))
}

// xzPos returns the offset in the xz body at which the bytes for NAR offset p begin
// (the piece header comes first when p starts a piece), for 0 <= p <= narSize.
func xzPos(p uint64) uint64 {
	return xzPrefix + p + xzPieceHeader*((p+xzPieceSize-1)/xzPieceSize)
}

// xzDataSize is the size of the block's compressed data: the pieces and the end marker.
func xzDataSize(narSize uint64) uint64 { return xzPos(narSize) - xzPrefix + 1 }

// xzTrailer returns what follows the LZMA2 data: block padding, index and footer.
func xzTrailer(narSize uint64) []byte {
	data := xzDataSize(narSize)
	var b []byte
	b = append(b, make([]byte, (4-(xzBlockHeader+data)%4)%4)...)
	idx := []byte{0x00}
	idx = binary.AppendUvarint(idx, 1)
	idx = binary.AppendUvarint(idx, xzBlockHeader+data) // unpadded size: no check field
	idx = binary.AppendUvarint(idx, narSize)
	idx = append(idx, make([]byte, (4-len(idx)%4)%4)...)
	idx = binary.LittleEndian.AppendUint32(idx, crc32.ChecksumIEEE(idx))
	b = append(b, idx...)
	foot := binary.LittleEndian.AppendUint32(nil, uint32(len(idx)/4-1))
	foot = append(foot, xzStreamFlags[:]...)
	b = binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(foot))
	b = append(b, foot...)
	return append(b, 'Y', 'Z')
}

// xzSize is the length of the whole xz body of a NAR of narSize bytes.
func xzSize(narSize uint64) uint64 {
	return xzPos(narSize) + 1 + uint64(len(xzTrailer(narSize)))
}

// xzPieceHeader returns the LZMA2 chunk header of the piece starting at NAR offset p.
func xzChunkHeader(p, narSize uint64) [3]byte {
	n := min(xzPieceSize, narSize-p)
	ctl := byte(0x02)
	if p == 0 {
		ctl = 0x01
	}
	return [3]byte{ctl, byte((n - 1) >> 8), byte(n - 1)}
}

// xzFrame emits raw, the NAR bytes from offset *narOff on, with an LZMA2 chunk header
// before each 64 KiB piece, and advances *narOff.
func xzFrame(raw []byte, narOff *uint64, narSize uint64, emit func([]byte) error) error {
	for len(raw) > 0 {
		if *narOff%xzPieceSize == 0 {
			hdr := xzChunkHeader(*narOff, narSize)
			if err := emit(hdr[:]); err != nil {
				return err
			}
		}
		k := min(uint64(len(raw)), xzPieceSize-*narOff%xzPieceSize)
		if err := emit(raw[:k]); err != nil {
			return err
		}
		raw = raw[k:]
		*narOff += k
	}
	return nil
}
