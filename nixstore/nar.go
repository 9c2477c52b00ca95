package nixstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
)

// Layout is a store path's NAR serialization described without its file contents: the
// bytes Nix's serializer writes itself (tokens, names, lengths, padding) are kept in
// memory, and each regular file's contents are a range of the NAR read from disk on
// demand. A byte range of the NAR is then a few metadata copies and file reads, so
// serving one chunk never re-serializes the path from its start.
//
// A Layout is a snapshot of the tree when it was built; if the path changes later, reads
// return different bytes (or fail), which the chunk ID check catches.
type Layout struct {
	Path string
	Size uint64
	segs []segment // in NAR order, contiguous from 0
}

// segment is a run of NAR bytes starting at off: either meta (when file is empty) or
// the first n bytes of file.
type segment struct {
	off  uint64
	meta []byte
	file string
	n    uint64
}

func (s segment) len() uint64 {
	if s.file == "" {
		return uint64(len(s.meta))
	}
	return s.n
}

// NewLayout walks the tree at path (a store path, or any file, directory or symlink) as
// Nix's NAR serializer does: directory entries in byte order of their names, symlinks
// not followed, regular files executable when the owner may execute them.
func NewLayout(path string) (*Layout, error) {
	b := &layoutBuilder{}
	b.str("nix-archive-1")
	if err := b.node(path); err != nil {
		return nil, fmt.Errorf("reading %s as a NAR: %w", path, err)
	}
	b.flush()
	return &Layout{Path: path, Size: b.off, segs: b.segs}, nil
}

type layoutBuilder struct {
	segs []segment
	meta []byte // metadata not yet in segs
	off  uint64 // NAR offset of the end of what is in segs
}

func (b *layoutBuilder) str(s string) {
	b.meta = binary.LittleEndian.AppendUint64(b.meta, uint64(len(s)))
	b.meta = append(b.meta, s...)
	b.meta = append(b.meta, make([]byte, pad(uint64(len(s))))...)
}

func (b *layoutBuilder) flush() {
	if len(b.meta) == 0 {
		return
	}
	b.segs = append(b.segs, segment{off: b.off, meta: b.meta})
	b.off += uint64(len(b.meta))
	b.meta = nil
}

func pad(n uint64) uint64 { return (8 - n%8) % 8 }

func (b *layoutBuilder) node(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	b.str("(")
	b.str("type")
	switch mode := fi.Mode(); {
	case mode.IsRegular():
		b.str("regular")
		if mode&0o100 != 0 {
			b.str("executable")
			b.str("")
		}
		b.str("contents")
		n := uint64(fi.Size())
		b.meta = binary.LittleEndian.AppendUint64(b.meta, n)
		b.flush()
		if n > 0 {
			b.segs = append(b.segs, segment{off: b.off, file: path, n: n})
			b.off += n
		}
		b.meta = append(b.meta, make([]byte, pad(n))...)
	case mode&os.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			return err
		}
		b.str("symlink")
		b.str("target")
		b.str(target)
	case mode.IsDir():
		b.str("directory")
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return err
		}
		slices.Sort(names) // Go compares strings bytewise, as Nix's std::map does
		for _, name := range names {
			b.str("entry")
			b.str("(")
			b.str("name")
			b.str(name)
			b.str("node")
			if err := b.node(filepath.Join(path, name)); err != nil {
				return err
			}
			b.str(")")
		}
	default:
		return fmt.Errorf("%s: file type %s has no NAR form", path, mode.Type())
	}
	b.str(")")
	return nil
}

// errChanged means a file is shorter than when the layout was made.
var errChanged = errors.New("file changed since the store path was indexed")

// ReadAt reads NAR bytes [off, off+len(p)); it implements io.ReaderAt.
func (l *Layout) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("reading NAR of %s: negative offset", l.Path)
	}
	if uint64(off) >= l.Size {
		return 0, io.EOF
	}
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].off+l.segs[i].len() > uint64(off) })
	n := 0
	for ; n < len(p) && i < len(l.segs); i++ {
		s := l.segs[i]
		in := uint64(off) + uint64(n) - s.off
		want := min(s.len()-in, uint64(len(p)-n))
		if s.file == "" {
			n += copy(p[n:], s.meta[in:in+want])
			continue
		}
		f, err := os.Open(s.file)
		if err != nil {
			return n, fmt.Errorf("reading NAR of %s: %w", l.Path, err)
		}
		got, err := f.ReadAt(p[n:n+int(want)], int64(in))
		f.Close()
		n += got
		if uint64(got) < want {
			if err == nil || errors.Is(err, io.EOF) {
				err = errChanged
			}
			return n, fmt.Errorf("reading NAR of %s: %s: %w", l.Path, s.file, err)
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Reader returns the whole NAR as a stream.
func (l *Layout) Reader() io.Reader { return io.NewSectionReader(l, 0, int64(l.Size)) }
