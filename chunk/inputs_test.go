package chunk

import (
	"bytes"
	"encoding/binary"
	"strings"
)

// The golden inputs are fully specified in docs/format.md so that another
// implementation can regenerate them byte for byte.

// splitMix64 is the SplitMix64 generator (Steele, Lea, Flood 2014).
type splitMix64 uint64

func (s *splitMix64) next() uint64 {
	*s += 0x9e3779b97f4a7c15
	z := uint64(*s)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// randomInput is n bytes of SplitMix64 seeded with 1, each output written
// little-endian; the last output is truncated when n is not a multiple of 8.
func randomInput(n int) []byte {
	s := splitMix64(1)
	out := make([]byte, (n+7)&^7)
	for i := 0; i < len(out); i += 8 {
		binary.LittleEndian.PutUint64(out[i:], s.next())
	}
	return out[:n]
}

// lowEntropyText is repeated to build the low-entropy input.
const lowEntropyText = "shoal cuts the same bytes at the same places, every time.\n"

// lowEntropyInput is lowEntropyText repeated and truncated to n bytes, then
// mutated n/1024 times: for each mutation r = SplitMix64 seeded with 2,
// byte r%n becomes r>>56.
func lowEntropyInput(n int) []byte {
	out := bytes.Repeat([]byte(lowEntropyText), n/len(lowEntropyText)+1)[:n]
	s := splitMix64(2)
	for range n / 1024 {
		r := s.next()
		out[r%uint64(n)] = byte(r >> 56)
	}
	return out
}

// referenceCut is a deliberately plain one-byte-at-a-time FastCDC-2020 cut,
// written from the paper's description rather than from Chunker.cut, to check
// that the two-byte loop cuts at exactly the same places. The scan window
// [Min&^1, Max&^1) and the switch to the large mask at Avg&^1 follow the
// reference implementation's pairwise loop.
func referenceCut(data []byte, p Params) int {
	if len(data) <= p.Min {
		return len(data)
	}
	n := min(len(data), p.Max)
	center := min(p.Avg, n) &^ 1
	small, large := p.maskBits()
	var fp uint64
	for i := p.Min &^ 1; i < n&^1; i++ {
		fp = fp<<1 + gear[data[i]]
		mask := masks[large]
		if i < center {
			mask = masks[small]
		}
		if fp&mask == 0 {
			return i
		}
	}
	return n
}

// referenceChunks cuts all of data with referenceCut.
func referenceChunks(data []byte, p Params) [][]byte {
	var out [][]byte
	for len(data) > 0 {
		n := referenceCut(data, p)
		out = append(out, data[:n])
		data = data[n:]
	}
	return out
}

// codeLikeInput is n bytes of words drawn at random from a small vocabulary, with
// punctuation and indentation: what zstd sees in source code and text, many short
// matches and literal runs between them. (The other inputs are all literals or all
// one match.)
func codeLikeInput(n int) []byte {
	words := strings.Fields(`func return if err != nil { } package import type struct
		interface map string int byte slice append len cap for range go defer select case
		default chan var const nix store path chunk hash narinfo manifest delta pack zstd`)
	s := splitMix64(3)
	out := make([]byte, 0, n+64)
	for len(out) < n {
		r := s.next()
		out = append(out, words[r%uint64(len(words))]...)
		switch (r >> 32) % 8 {
		case 0:
			out = append(out, "\n\t\t"...)
		case 1:
			out = append(out, '(')
		case 2:
			out = append(out, ", "...)
		default:
			out = append(out, ' ')
		}
	}
	return out[:n]
}
