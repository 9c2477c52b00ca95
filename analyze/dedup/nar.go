package dedup

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// NAR grammar limits. Names and symlink targets are bounded like Nix bounds them
// (NAME_MAX, PATH_MAX); the depth bound keeps a hostile NAR from exhausting the
// stack of the recursive parser.
const (
	maxTokenLen  = 32
	maxNameLen   = 255
	maxTargetLen = 4095
	maxDepth     = 1024
)

// splitNAR reads a NAR from r and calls emit with consecutive segments that
// together are exactly the NAR's bytes. A segment ends right after the contents
// of each regular file (and the last one at the end of the NAR), so each
// segment is the NAR's framing before a file (closing tokens of the previous
// entry, the entry's name, type and length) followed by the file's contents.
// Chunking each segment on its own therefore never lets a chunk span two
// files.
//
// File contents are streamed, never buffered: emit must read its segment to
// the end before it returns, and must not keep it. Framing bytes, which are
// small, are buffered. A malformed or truncated NAR is an error.
func splitNAR(r io.Reader, emit func(seg io.Reader) error) error {
	s := &narSplitter{r: bufio.NewReaderSize(r, 64<<10), emit: emit}
	if err := s.expect("nix-archive-1"); err != nil {
		return fmt.Errorf("reading NAR magic: %w", err)
	}
	if err := s.node(0); err != nil {
		return err
	}
	if _, err := s.r.Peek(1); err != io.EOF {
		if err == nil {
			return errors.New("NAR: unexpected bytes after the root node")
		}
		return fmt.Errorf("NAR: reading past the root node: %w", err)
	}
	if s.meta.Len() > 0 {
		return s.emit(bytes.NewReader(s.meta.Bytes()))
	}
	return nil
}

type narSplitter struct {
	r    *bufio.Reader
	meta bytes.Buffer // framing bytes since the last segment ended
	emit func(io.Reader) error
	num  [8]byte
}

// uint64 reads a little-endian 64-bit integer into the framing buffer.
func (s *narSplitter) uint64() (uint64, error) {
	if _, err := io.ReadFull(s.r, s.num[:]); err != nil {
		return 0, noEOF(err)
	}
	s.meta.Write(s.num[:])
	return binary.LittleEndian.Uint64(s.num[:]), nil
}

// token reads a NAR string of at most max bytes, with its padding, into the
// framing buffer and returns it.
func (s *narSplitter) token(max int) (string, error) {
	n, err := s.uint64()
	if err != nil {
		return "", err
	}
	if n > uint64(max) {
		return "", fmt.Errorf("NAR: string of %d bytes where at most %d are allowed", n, max)
	}
	padded := (int(n) + 7) &^ 7
	start := s.meta.Len()
	if _, err := io.CopyN(&s.meta, s.r, int64(padded)); err != nil {
		return "", noEOF(err)
	}
	b := s.meta.Bytes()[start:]
	for _, c := range b[n:] {
		if c != 0 {
			return "", errors.New("NAR: non-zero padding")
		}
	}
	return string(b[:n]), nil
}

func (s *narSplitter) expect(want string) error {
	got, err := s.token(max(len(want), maxTokenLen))
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("NAR: got %q, want %q", got, want)
	}
	return nil
}

func (s *narSplitter) node(depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("NAR: directories nested deeper than %d", maxDepth)
	}
	if err := s.expect("("); err != nil {
		return err
	}
	if err := s.expect("type"); err != nil {
		return err
	}
	typ, err := s.token(maxTokenLen)
	if err != nil {
		return err
	}
	switch typ {
	case "regular":
		tok, err := s.token(maxTokenLen)
		if err != nil {
			return err
		}
		if tok == "executable" {
			if err := s.expect(""); err != nil {
				return err
			}
			if tok, err = s.token(maxTokenLen); err != nil {
				return err
			}
		}
		if tok != "contents" {
			return fmt.Errorf("NAR: got %q, want \"contents\"", tok)
		}
		if err := s.contents(); err != nil {
			return err
		}
	case "symlink":
		if err := s.expect("target"); err != nil {
			return err
		}
		if _, err := s.token(maxTargetLen); err != nil {
			return err
		}
	case "directory":
		for {
			tok, err := s.token(maxTokenLen)
			if err != nil {
				return err
			}
			if tok == ")" {
				return nil
			}
			if tok != "entry" {
				return fmt.Errorf("NAR: got %q in a directory, want \"entry\" or \")\"", tok)
			}
			if err := s.expect("("); err != nil {
				return err
			}
			if err := s.expect("name"); err != nil {
				return err
			}
			if _, err := s.token(maxNameLen); err != nil {
				return err
			}
			if err := s.expect("node"); err != nil {
				return err
			}
			if err := s.node(depth + 1); err != nil {
				return err
			}
			if err := s.expect(")"); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("NAR: unknown node type %q", typ)
	}
	return s.expect(")")
}

// contents emits the framing so far followed by a file's contents as one
// segment, then reads the contents' padding into the next segment's framing.
func (s *narSplitter) contents() error {
	n, err := s.uint64()
	if err != nil {
		return err
	}
	if n > 1<<62 {
		return fmt.Errorf("NAR: file of %d bytes", n)
	}
	body := &io.LimitedReader{R: s.r, N: int64(n)}
	if err := s.emit(io.MultiReader(bytes.NewReader(s.meta.Bytes()), body)); err != nil {
		return err
	}
	if body.N != 0 {
		return fmt.Errorf("NAR: file contents end %d bytes early", body.N)
	}
	s.meta.Reset()
	if pad := int64(-n & 7); pad > 0 {
		start := s.meta.Len()
		if _, err := io.CopyN(&s.meta, s.r, pad); err != nil {
			return noEOF(err)
		}
		for _, c := range s.meta.Bytes()[start:] {
			if c != 0 {
				return errors.New("NAR: non-zero padding")
			}
		}
	}
	return nil
}

// noEOF turns a clean EOF inside the grammar into the truncation it is.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("NAR: truncated: %w", io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("reading NAR: %w", err)
}
