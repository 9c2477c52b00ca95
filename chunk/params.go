package chunk

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// MaxChunkSize is the hard ceiling any reader enforces on one chunk, whatever
// a manifest or a chunker identity claims: it bounds the memory one untrusted
// chunk can make a reader allocate.
const MaxChunkSize = 16 << 20

// minChunkSize is the smallest Min a chunker may be configured with; smaller
// chunks cost more in per-chunk overhead than they can gain in dedup.
const minChunkSize = 64

// normalization is the FastCDC normalization level. It is fixed because it is
// part of the cut points, and therefore of the format.
const normalization = 2

// identityPrefix starts every chunker identity this package understands.
const identityPrefix = "fastcdc2020-nc2"

// Params are FastCDC-2020 parameters; normalization level is always 2.
type Params struct{ Min, Avg, Max int }

// DefaultParams are 16/64/256 KiB, the sizes other Nix chunk stores settled
// on; shoal's published data is cut with these.
func DefaultParams() Params {
	return Params{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}
}

// Validate reports whether p describes a chunker this package can run: Avg a
// power of two, 64 <= Min < Avg < Max <= MaxChunkSize, and Avg such that both
// normalized masks exist in the FastCDC-2020 mask table (128 B to 8 MiB).
func (p Params) Validate() error {
	switch {
	case p.Avg <= 0 || p.Avg&(p.Avg-1) != 0:
		return fmt.Errorf("chunker params %+v: Avg must be a power of two", p)
	case p.Min < minChunkSize:
		return fmt.Errorf("chunker params %+v: Min must be at least %d", p, minChunkSize)
	case p.Min >= p.Avg:
		return fmt.Errorf("chunker params %+v: Min must be less than Avg", p)
	case p.Avg >= p.Max:
		return fmt.Errorf("chunker params %+v: Avg must be less than Max", p)
	case p.Max > MaxChunkSize:
		return fmt.Errorf("chunker params %+v: Max must be at most %d", p, MaxChunkSize)
	}
	small, large := p.maskBits()
	if small >= len(masks) || large < 0 || masks[large] == 0 {
		return fmt.Errorf("chunker params %+v: Avg outside the FastCDC-2020 mask table at normalization %d", p, normalization)
	}
	return nil
}

// maskBits returns the mask table indexes for the small (before Avg, harder
// to match) and large (after Avg, easier to match) masks.
func (p Params) maskBits() (small, large int) {
	b := bits.TrailingZeros(uint(p.Avg))
	return b + normalization, b - normalization
}

// SmallestCut is the shortest length a chunk can have when it is not the last
// one of its stream. It is Min rounded down to even, not Min, because the
// canonical two-bytes-per-iteration loop starts its scan at Min&^1.
func (p Params) SmallestCut() int {
	return p.Min &^ 1
}

// Identity names the chunker and its parameters, e.g.
// "fastcdc2020-nc2-16384-65536-262144" for the defaults. Manifests record it
// so that data cut by different chunkers is never mixed.
func (p Params) Identity() string {
	return identityPrefix + "-" + strconv.Itoa(p.Min) + "-" + strconv.Itoa(p.Avg) + "-" + strconv.Itoa(p.Max)
}

// ParseIdentity is the inverse of Identity. It rejects unknown chunkers,
// other normalization levels, non-canonical numbers (leading zeros, signs)
// and parameters that fail Validate, so that every accepted identity is
// exactly what Identity would print.
func ParseIdentity(s string) (Params, error) {
	rest, ok := strings.CutPrefix(s, identityPrefix+"-")
	if !ok {
		return Params{}, fmt.Errorf("parsing chunker identity %q: unknown chunker, want prefix %q", s, identityPrefix+"-")
	}
	fields := strings.Split(rest, "-")
	if len(fields) != 3 {
		return Params{}, fmt.Errorf("parsing chunker identity %q: want 3 sizes after %q, got %d", s, identityPrefix, len(fields))
	}
	var n [3]int
	for i, f := range fields {
		v, err := parseSize(f)
		if err != nil {
			return Params{}, fmt.Errorf("parsing chunker identity %q: %w", s, err)
		}
		n[i] = v
	}
	p := Params{Min: n[0], Avg: n[1], Max: n[2]}
	if err := p.Validate(); err != nil {
		return Params{}, fmt.Errorf("parsing chunker identity %q: %w", s, err)
	}
	return p, nil
}

var errBadSize = errors.New("size must be a decimal number without sign or leading zeros")

// parseSize accepts only the decimal spelling strconv.Itoa produces for a
// positive int no larger than MaxChunkSize.
func parseSize(f string) (int, error) {
	if f == "" || len(f) > 8 || f[0] == '0' {
		return 0, fmt.Errorf("size %q: %w", f, errBadSize)
	}
	v := 0
	for i := 0; i < len(f); i++ {
		c := f[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("size %q: %w", f, errBadSize)
		}
		v = v*10 + int(c-'0')
	}
	return v, nil
}
