package localcache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Record layouts. Each starts with a format byte so a later schema can
// change one record type without rewriting the others.
//
//	narinfo: 0x01, flags (bit 0: negative), expires, source, reason, raw (rest of record)
//	route:   0x01, nar size (uvarint), last used, hash part, store path, source
//
// A time is a varint of Unix seconds followed by a uvarint of nanoseconds;
// a string is a uvarint length followed by its bytes.
const (
	narInfoFormat byte = 1
	routeFormat   byte = 1

	flagNegative byte = 1 << 0
)

var errShortRecord = errors.New("record truncated")

func appendTime(b []byte, t time.Time) []byte {
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func encodeNarInfo(e NarInfoEntry) []byte {
	b := make([]byte, 0, 2+20+len(e.Source)+len(e.Reason)+len(e.Raw)+4)
	var flags byte
	if e.Negative {
		flags |= flagNegative
	}
	b = append(b, narInfoFormat, flags)
	b = appendTime(b, e.Expires)
	b = appendString(b, e.Source)
	b = appendString(b, e.Reason)
	return append(b, e.Raw...)
}

// narInfoRecord is a narinfo record read in place: its slices alias the record.
type narInfoRecord struct {
	negative            bool
	expires             time.Time
	source, reason, raw []byte
}

func readNarInfo(v []byte) (narInfoRecord, error) {
	d := decoder{buf: v}
	var r narInfoRecord
	if f := d.byte(); f != narInfoFormat && d.err == nil {
		return r, fmt.Errorf("narinfo record format %d unknown", f)
	}
	flags := d.byte()
	r.expires = d.time()
	r.source = d.bytes()
	r.reason = d.bytes()
	if d.err != nil {
		return narInfoRecord{}, fmt.Errorf("decoding narinfo record: %w", d.err)
	}
	r.negative = flags&flagNegative != 0
	r.raw = d.buf
	return r, nil
}

func decodeNarInfo(v []byte) (NarInfoEntry, error) {
	r, err := readNarInfo(v)
	if err != nil {
		return NarInfoEntry{}, err
	}
	e := NarInfoEntry{Expires: r.expires, Source: string(r.source), Reason: string(r.reason), Negative: r.negative}
	if !r.negative {
		e.Raw = append([]byte{}, r.raw...)
	}
	return e, nil
}

// narInfoHolds reports whether the record v is a positive entry, live at now, of
// exactly raw from source, reading it in place.
func narInfoHolds(v, raw []byte, source string, now time.Time) bool {
	r, err := readNarInfo(v)
	return err == nil && !r.negative && now.Before(r.expires) &&
		string(r.source) == source && bytes.Equal(r.raw, raw)
}

func encodeNarRoute(r NarRoute) []byte {
	b := make([]byte, 0, 1+10+20+len(r.HashPart)+len(r.StorePath)+len(r.Source)+6)
	b = append(b, routeFormat)
	b = binary.AppendUvarint(b, r.NarSize)
	b = appendTime(b, r.LastUsed)
	b = appendString(b, r.HashPart)
	b = appendString(b, r.StorePath)
	return appendString(b, r.Source)
}

func decodeNarRoute(v []byte) (NarRoute, error) {
	d := decoder{buf: v}
	var r NarRoute
	if f := d.byte(); f != routeFormat && d.err == nil {
		return r, fmt.Errorf("route record format %d unknown", f)
	}
	r.NarSize = d.uvarint()
	r.LastUsed = d.time()
	r.HashPart = d.string()
	r.StorePath = d.string()
	r.Source = d.string()
	if d.err == nil && len(d.buf) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.buf))
	}
	if d.err != nil {
		return NarRoute{}, fmt.Errorf("decoding route record: %w", d.err)
	}
	return r, nil
}

// decoder reads fields in order and remembers the first error, so callers
// check once at the end. Strings are copied: the input points into the mmap.
type decoder struct {
	buf []byte
	err error
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.buf) == 0 {
		d.err = errShortRecord
		return 0
	}
	c := d.buf[0]
	d.buf = d.buf[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.err = errShortRecord
		return 0
	}
	d.buf = d.buf[n:]
	return x
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Varint(d.buf)
	if n <= 0 {
		d.err = errShortRecord
		return 0
	}
	d.buf = d.buf[n:]
	return x
}

func (d *decoder) time() time.Time {
	sec := d.varint()
	nsec := d.uvarint()
	if d.err != nil {
		return time.Time{}
	}
	if nsec >= uint64(time.Second) {
		d.err = fmt.Errorf("nanoseconds %d out of range", nsec)
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

func (d *decoder) string() string {
	return string(d.bytes())
}

// bytes is string without the copy: the result aliases the record.
func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.buf)) {
		d.err = errShortRecord
		return nil
	}
	b := d.buf[:n]
	d.buf = d.buf[n:]
	return b
}
