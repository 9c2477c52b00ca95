package localcache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// ErrCorrupt is returned by Open for a cache file whose structure is damaged. The
// file can be moved aside (the daemon does so and starts afresh) or salvaged with
// Salvage.
var ErrCorrupt = errors.New("localcache: cache file is damaged")

// bbolt's on-disk layout (format version 2), as far as walking the tree needs it.
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	pageHeaderSize   = 16
	elementSize      = 16 // branch and leaf element headers alike
	branchPageFlag   = 0x01
	leafPageFlag     = 0x02
	bucketLeafFlag   = 0x01
	inBucketSize     = 16 // root page ID, sequence
	noFreelist       = ^uint64(0)
	metaChecksumSpan = 56 // magic .. txid, the bytes the meta checksum covers
)

// checkFile walks the page tree of a bbolt file with every offset and length
// bounds-checked, before bbolt maps it. bbolt trusts its pages: a damaged one makes it
// panic while opening the file, some of those panics in goroutines of its own that no
// caller can recover, so the whole process dies, and under systemd dies again at each
// restart. visit, when set, gets every key and value of every leaf reached, with the
// names of the buckets above it; damaged subtrees are skipped (and reported) instead
// of ending the walk, which is what Salvage needs.
func checkFile(path string, visit func(buckets [][]byte, k, v []byte)) error {
	return walkFile(path, visit, nil)
}

// walkFile is checkFile that also hands orphan, when set, the records of every sound
// leaf page the tree no longer reaches (under a damaged branch page), with no bucket
// to say what they are.
func walkFile(path string, visit func(buckets [][]byte, k, v []byte), orphan func(k, v []byte)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	w := &walker{f: f, size: fi.Size(), visit: visit, seen: map[uint64]bool{}}
	err = w.run()
	if orphan != nil && w.pageSize > 0 {
		w.orphans(orphan)
	}
	return err
}

// orphans reads every page the walk did not reach, and passes on the records of those
// that are sound leaf pages.
func (w *walker) orphans(fn func(k, v []byte)) {
	reached := w.seen
	for id := uint64(2); id < w.highMark; id++ {
		if reached[id] {
			continue
		}
		w.seen = map[uint64]bool{}
		w.damage = nil
		w.visit = func(_ [][]byte, k, v []byte) { fn(k, v) }
		p, err := w.page(id, leafPageFlag)
		if err != nil {
			continue
		}
		w.elements(p, w.spanOf(p), -1, id, nil, nil, nil)
		id += uint64(binary.LittleEndian.Uint32(p[12:]))
	}
}

type walker struct {
	f        *os.File
	size     int64
	pageSize int64
	highMark uint64 // pages below this ID are in use
	visit    func(buckets [][]byte, k, v []byte)
	seen     map[uint64]bool
	damage   []error
}

func (w *walker) run() error {
	var hdr [4096]byte
	n, err := w.f.ReadAt(hdr[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	// The page size is in the first meta page; the second meta page follows it.
	var metas [][]byte
	if n >= pageHeaderSize+metaChecksumSpan+8 {
		metas = append(metas, hdr[pageHeaderSize:n])
	}
	if n >= pageHeaderSize+12 {
		if ps := int64(binary.LittleEndian.Uint32(hdr[pageHeaderSize+8:])); ps >= 512 && ps <= 1<<16 {
			second := make([]byte, pageHeaderSize+metaChecksumSpan+8)
			if _, err := w.f.ReadAt(second, ps); err == nil {
				metas = append(metas, second[pageHeaderSize:])
			}
		}
	}
	var best []byte
	var bestTx uint64
	for _, m := range metas {
		if validMeta(m) && (best == nil || txid(m) > bestTx) {
			best, bestTx = m, txid(m)
		}
	}
	if best == nil {
		return fmt.Errorf("%w: no valid meta page", ErrCorrupt)
	}
	w.pageSize = int64(binary.LittleEndian.Uint32(best[8:]))
	w.highMark = binary.LittleEndian.Uint64(best[40:])
	if int64(w.highMark)*w.pageSize > w.size {
		return fmt.Errorf("%w: meta page claims %d pages, the file holds %d", ErrCorrupt, w.highMark, w.size/w.pageSize)
	}
	if fl := binary.LittleEndian.Uint64(best[32:]); fl != noFreelist {
		if _, err := w.page(fl, 0x10); err != nil {
			return err
		}
	}
	w.tree(binary.LittleEndian.Uint64(best[16:]), nil)
	if len(w.damage) > 0 {
		return fmt.Errorf("%w: %w", ErrCorrupt, errors.Join(w.damage...))
	}
	return nil
}

func validMeta(m []byte) bool {
	if binary.LittleEndian.Uint32(m[0:]) != boltMagic || binary.LittleEndian.Uint32(m[4:]) != boltVersion {
		return false
	}
	h := fnv.New64a()
	_, _ = h.Write(m[:metaChecksumSpan])
	ps := binary.LittleEndian.Uint32(m[8:])
	return h.Sum64() == binary.LittleEndian.Uint64(m[metaChecksumSpan:]) && ps >= 512 && ps <= 1<<16 && ps&(ps-1) == 0
}

func txid(m []byte) uint64 { return binary.LittleEndian.Uint64(m[48:]) }

// page reads page id's header and element headers (and, for visit, the whole page),
// checking that it is what its parent says it is and that it lies in the file.
func (w *walker) page(id uint64, wantFlags uint16) ([]byte, error) {
	if id < 2 || id >= w.highMark {
		return nil, fmt.Errorf("page %d outside the file's %d pages", id, w.highMark)
	}
	if w.seen[id] {
		return nil, fmt.Errorf("page %d is referenced twice", id)
	}
	w.seen[id] = true
	var h [pageHeaderSize]byte
	if _, err := w.f.ReadAt(h[:], int64(id)*w.pageSize); err != nil {
		return nil, fmt.Errorf("reading page %d: %w", id, err)
	}
	gotID, flags := binary.LittleEndian.Uint64(h[0:]), binary.LittleEndian.Uint16(h[8:])
	count, overflow := binary.LittleEndian.Uint16(h[10:]), binary.LittleEndian.Uint32(h[12:])
	if gotID != id {
		return nil, fmt.Errorf("page %d identifies as %d", id, gotID)
	}
	if flags&wantFlags == 0 {
		return nil, fmt.Errorf("page %d has flags %#x, want %#x", id, flags, wantFlags)
	}
	if id+uint64(overflow) >= w.highMark {
		return nil, fmt.Errorf("page %d overflows past the file's %d pages", id, w.highMark)
	}
	for i := uint64(1); i <= uint64(overflow); i++ {
		w.seen[id+i] = true
	}
	span := (int64(overflow) + 1) * w.pageSize
	if flags&0x10 != 0 {
		return nil, nil // a freelist page: in bounds is all bbolt needs at open
	}
	if int64(pageHeaderSize+int(count)*elementSize) > span {
		return nil, fmt.Errorf("page %d: %d elements don't fit in %d bytes", id, count, span)
	}
	n := int64(pageHeaderSize + int(count)*elementSize)
	if w.visit != nil {
		n = span // every key and value is wanted
	}
	buf := make([]byte, n)
	if _, err := w.f.ReadAt(buf, int64(id)*w.pageSize); err != nil {
		return nil, fmt.Errorf("reading page %d: %w", id, err)
	}
	return buf, nil
}

// tree walks the bucket rooted at page root; a damaged page is recorded and its
// subtree skipped.
func (w *walker) tree(root uint64, buckets [][]byte) {
	p, err := w.page(root, branchPageFlag|leafPageFlag)
	if err != nil {
		w.damage = append(w.damage, err)
		return
	}
	w.elements(p, w.spanOf(p), int64(root)*w.pageSize, root, buckets, nil, nil)
}

func (w *walker) spanOf(p []byte) int64 {
	return (int64(binary.LittleEndian.Uint32(p[12:])) + 1) * w.pageSize
}

// bytesAt returns n bytes at off in the page read into p, from the file past what
// was read (base < 0: p is all there is).
func (w *walker) bytesAt(p []byte, base, off, n int64) ([]byte, error) {
	if off+n <= int64(len(p)) {
		return p[off : off+n], nil
	}
	if base < 0 {
		return nil, io.ErrUnexpectedEOF
	}
	b := make([]byte, n)
	if _, err := w.f.ReadAt(b, base+off); err != nil {
		return nil, err
	}
	return b, nil
}

// elements checks and follows the elements of page p, which spans span bytes from
// base in the file (for an inline bucket, base is -1 and p the value holding it).
// Keys must be in the order bbolt checks when it opens the file: ascending within a
// page, at least minKey and below maxKey (nil: no bound), the bounds its ancestors
// set; it returns the largest key below p.
func (w *walker) elements(p []byte, span, base int64, id uint64, buckets [][]byte, minKey, maxKey []byte) (maxInSubtree []byte) {
	flags, count := binary.LittleEndian.Uint16(p[8:]), int(binary.LittleEndian.Uint16(p[10:]))
	if int64(pageHeaderSize+count*elementSize) > span {
		w.damage = append(w.damage, fmt.Errorf("page %d: %d elements don't fit in %d bytes", id, count, span))
		return nil
	}
	inline := base < 0
	prev := minKey
	order := func(i int, k []byte) bool {
		if inline {
			return true // bbolt checks no order in inline buckets
		}
		if (i == 0 && prev != nil && bytes.Compare(prev, k) > 0) || (i > 0 && bytes.Compare(prev, k) >= 0) || (maxKey != nil && bytes.Compare(k, maxKey) >= 0) {
			w.damage = append(w.damage, fmt.Errorf("page %d: key %d out of order", id, i))
			return false
		}
		return true
	}
	for i := range count {
		e := p[pageHeaderSize+i*elementSize:]
		at := int64(pageHeaderSize + i*elementSize)
		if flags&branchPageFlag != 0 {
			pos, ksize := int64(binary.LittleEndian.Uint32(e[0:])), int64(binary.LittleEndian.Uint32(e[4:]))
			if at+pos+ksize > span {
				w.damage = append(w.damage, fmt.Errorf("page %d: branch key %d lies past the page", id, i))
				return nil
			}
			k, err := w.bytesAt(p, base, at+pos, ksize)
			if err != nil {
				w.damage = append(w.damage, fmt.Errorf("page %d: reading key %d: %w", id, i, err))
				return nil
			}
			if !order(i, k) {
				return nil
			}
			next := maxKey
			if i < count-1 {
				ne := p[pageHeaderSize+(i+1)*elementSize:]
				npos, nksize := int64(binary.LittleEndian.Uint32(ne[0:])), int64(binary.LittleEndian.Uint32(ne[4:]))
				nat := at + elementSize
				if nat+npos+nksize > span {
					w.damage = append(w.damage, fmt.Errorf("page %d: branch key %d lies past the page", id, i+1))
					return nil
				}
				if next, err = w.bytesAt(p, base, nat+npos, nksize); err != nil {
					w.damage = append(w.damage, fmt.Errorf("page %d: reading key %d: %w", id, i+1, err))
					return nil
				}
			}
			child := binary.LittleEndian.Uint64(e[8:])
			c, err := w.page(child, branchPageFlag|leafPageFlag)
			if err != nil {
				w.damage = append(w.damage, err)
				return nil
			}
			maxInSubtree = w.elements(c, w.spanOf(c), int64(child)*w.pageSize, child, buckets, k, next)
			if maxInSubtree == nil {
				return nil // the subtree was damaged or empty; its keys bound nothing
			}
			prev = maxInSubtree
			continue
		}
		eflags := binary.LittleEndian.Uint32(e[0:])
		pos, ksize, vsize := int64(binary.LittleEndian.Uint32(e[4:])), int64(binary.LittleEndian.Uint32(e[8:])), int64(binary.LittleEndian.Uint32(e[12:]))
		if at+pos+ksize+vsize > span {
			w.damage = append(w.damage, fmt.Errorf("page %d: element %d lies past the page", id, i))
			return nil
		}
		k, err := w.bytesAt(p, base, at+pos, ksize)
		if err != nil {
			w.damage = append(w.damage, fmt.Errorf("page %d: reading key %d: %w", id, i, err))
			return nil
		}
		if !order(i, k) {
			return nil
		}
		prev, maxInSubtree = k, k
		if eflags&bucketLeafFlag == 0 {
			if w.visit != nil {
				w.visit(buckets, k, p[at+pos+ksize:at+pos+ksize+vsize])
			}
			continue
		}
		if vsize < inBucketSize || vsize > w.pageSize {
			w.damage = append(w.damage, fmt.Errorf("page %d: bucket value %d is %d bytes", id, i, vsize))
			continue
		}
		v, err := w.bytesAt(p, base, at+pos+ksize, vsize)
		if err != nil {
			w.damage = append(w.damage, fmt.Errorf("page %d: reading bucket %d: %w", id, i, err))
			continue
		}
		sub := append(buckets[:len(buckets):len(buckets)], bytes.Clone(k))
		if r := binary.LittleEndian.Uint64(v); r != 0 {
			w.tree(r, sub)
			continue
		}
		// An inline bucket: its page is the rest of the value.
		page := v[inBucketSize:]
		if len(page) < pageHeaderSize {
			w.damage = append(w.damage, fmt.Errorf("page %d: inline bucket %d is %d bytes", id, i, len(page)))
			continue
		}
		if f := binary.LittleEndian.Uint16(page[8:]); f&leafPageFlag == 0 {
			w.damage = append(w.damage, fmt.Errorf("page %d: inline bucket %d is not a leaf", id, i))
			continue
		}
		w.elements(page, int64(len(page)), -1, id, sub, nil, nil)
	}
	return maxInSubtree
}
