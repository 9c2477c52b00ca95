package nixtest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
)

// PackageVersion returns version `version` (0, 1, 2, ...) of a small synthetic package
// as relative path -> contents, ready for AddPath:
//
//	lib/libdemo.so   binary-like data of about size bytes
//	share/doc/NEWS   a changelog that gains an entry each version
//	bin/demo         a launcher script naming the version
//
// shoal exists because consecutive versions of a package share most of their bytes,
// so its tests need data that behaves that way without downloading real releases.
// Version N+1 rewrites a few percent of the binary in a few places and inserts a few
// hundred bytes elsewhere: the inserts shift every later offset, so fixed-size blocks
// would stop matching and only content-defined chunking finds what is shared. The
// binary mixes machine-code-like runs, string tables, relocation-like records and
// incompressible blobs, so it compresses partly, as real binaries do, and compression
// and transfer measurements mean something. Everything derives from seed and version
// through a seeded generator: the same arguments always give the same bytes, and
// with them the same store path. PackageVersion panics if version or size is negative.
func PackageVersion(seed int64, version int, size int) map[string][]byte {
	if version < 0 || size < 0 {
		panic(fmt.Sprintf("nixtest.PackageVersion: version %d and size %d must not be negative", version, size))
	}
	bin := section(rng(seed, 0), size)
	for v := 1; v <= version; v++ {
		bin = nextBinary(rng(seed, v), bin)
	}
	return map[string][]byte{
		"lib/libdemo.so": bin,
		"share/doc/NEWS": news(seed, version),
		"bin/demo":       fmt.Appendf(nil, "#!/bin/sh\n# demo launcher, version %s\nexec \"$(dirname \"$0\")/../lib/libdemo.so\" \"$@\"\n", versionName(version)),
	}
}

// rng is the generator for one version step of one seed: each step draws from its
// own stream, so version N is the same whichever later versions are asked for.
func rng(seed int64, step int) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), uint64(step)))
}

func versionName(version int) string { return fmt.Sprintf("1.%d.0", version) }

// nextBinary derives the next version's binary from prev: about 3 % of it rewritten
// in two to four places, and one or two insertions of 16 to 512 bytes.
func nextBinary(r *rand.Rand, prev []byte) []byte {
	next := slices.Clone(prev)
	if len(next) == 0 {
		return section(r, 64)
	}
	edits := 2 + r.IntN(3)
	span := max(len(next)*3/100/edits, 16)
	for range edits {
		n := min(span, len(next))
		at := r.IntN(len(next) - n + 1)
		copy(next[at:at+n], section(r, n))
	}
	// The first insertion lands in the first quarter, as when early code grows, so
	// most of the file moves; a second may land anywhere.
	for i := range 1 + r.IntN(2) {
		limit := len(next) + 1
		if i == 0 {
			limit = len(next)/4 + 1
		}
		next = slices.Insert(next, r.IntN(limit), section(r, 16+r.IntN(497))...)
	}
	return next
}

// section returns n bytes of binary-like data made of runs of the kinds found in
// executables, each a few KiB long.
func section(r *rand.Rand, n int) []byte {
	out := make([]byte, 0, n)
	for len(out) < n {
		run := 1024 + r.IntN(8*1024)
		switch r.IntN(4) {
		case 0:
			out = codeLike(r, out, run)
		case 1:
			out = stringTable(r, out, run)
		case 2:
			out = relocations(r, out, run)
		default:
			out = incompressible(r, out, run)
		}
	}
	return out[:n]
}

// codeLike appends bytes drawn mostly from a small alphabet of "opcodes" followed by
// random operands: compressible, but not trivially.
func codeLike(r *rand.Rand, out []byte, n int) []byte {
	const opcodes = "\x48\x89\x8b\xe8\xc3\x0f\x85\x84\x74\x75\xeb\x31\xc0\xff\x83\x55"
	for end := len(out) + n; len(out) < end; {
		out = append(out, opcodes[r.IntN(len(opcodes))])
		for range r.IntN(4) {
			out = append(out, byte(r.Uint32()))
		}
	}
	return out
}

// stringTable appends NUL-terminated identifiers made of common syllables, like a
// symbol table.
func stringTable(r *rand.Rand, out []byte, n int) []byte {
	syllables := [...]string{"get", "set", "init", "buf", "str", "len", "_", "alloc", "free", "nix", "store", "path", "hash", "read", "write", "ctx"}
	for end := len(out) + n; len(out) < end; {
		for range 2 + r.IntN(4) {
			out = append(out, syllables[r.IntN(len(syllables))]...)
		}
		out = append(out, 0)
	}
	return out
}

// relocations appends 16-byte records with increasing offsets and a few distinct
// types, like a relocation table.
func relocations(r *rand.Rand, out []byte, n int) []byte {
	offset := r.Uint64() & 0xffffff
	for end := len(out) + n; len(out) < end; {
		offset += uint64(8 * (1 + r.IntN(4)))
		var rec [16]byte
		for i := range 8 {
			rec[i] = byte(offset >> (8 * i))
		}
		rec[8] = byte(r.IntN(3) + 1)
		rec[12] = byte(r.IntN(64))
		out = append(out, rec[:]...)
	}
	return out
}

// incompressible appends random bytes, like embedded compressed resources.
func incompressible(r *rand.Rand, out []byte, n int) []byte {
	for range n {
		out = append(out, byte(r.Uint32()))
	}
	return out
}

// news returns the changelog of the given version: newest entry first, so each
// version changes the head of the file and keeps the rest.
func news(seed int64, version int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "demo %s\n\n", versionName(version))
	words := strings.Fields("fix crash when the cache is empty speed up startup handle long paths update translations improve error messages")
	for v := version; v >= 0; v-- {
		r := rng(seed, -1-v) // a stream of its own, apart from the binary's
		fmt.Fprintf(&b, "* %s:", versionName(v))
		for range 3 + r.IntN(6) {
			b.WriteString(" " + words[r.IntN(len(words))])
		}
		b.WriteString("\n")
	}
	return b.Bytes()
}
