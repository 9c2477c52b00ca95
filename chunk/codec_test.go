package chunk

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

func newCodec(t testing.TB) *Codec {
	t.Helper()
	c, err := NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestCodecRoundTrip(t *testing.T) {
	c := newCodec(t)
	for _, size := range []int{0, 1, 255, 256, 1024, 1025, 64 << 10, 256<<10 + 3, MaxChunkSize} {
		for name, raw := range map[string][]byte{"random": randomInput(size), "low-entropy": lowEntropyInput(size)} {
			t.Run(fmt.Sprintf("%s/%d", name, size), func(t *testing.T) {
				prefix := []byte("prefix")
				obj := c.Encode(bytes.Clone(prefix), raw)
				if !bytes.HasPrefix(obj, prefix) {
					t.Fatal("Encode did not append to dst")
				}
				obj = obj[len(prefix):]
				var h zstd.Header
				if err := h.Decode(obj); err != nil || !h.HasFCS || h.FrameContentSize != uint64(size) {
					t.Fatalf("frame header: %v, HasFCS %v, content size %d; want %d", err, h.HasFCS, h.FrameContentSize, size)
				}
				got, err := c.Open(bytes.Clone(prefix), Sum(raw), obj, size)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got[:len(prefix)], prefix) || !bytes.Equal(got[len(prefix):], raw) {
					t.Fatal("Open did not append the original bytes to dst")
				}
			})
		}
	}
}

func TestCodecLimits(t *testing.T) {
	c := newCodec(t)
	raw := randomInput(10_000)
	obj := c.Encode(nil, raw)
	tests := []struct {
		name    string
		obj     []byte
		maxSize int
		ok      bool
	}{
		{"exact limit", obj, len(raw), true},
		{"declared above limit", obj, len(raw) - 1, false},
		{"negative limit", obj, -1, false},
		{"limit above the ceiling is clamped", c.Encode(nil, make([]byte, MaxChunkSize+1)), 1 << 30, false},
		{"empty object", nil, len(raw), false},
		{"garbage", []byte("this is not a zstd frame at all"), len(raw), false},
		{"skippable frame", []byte{0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0}, len(raw), false},
		{"trailing garbage", append(bytes.Clone(obj), "junk"...), len(raw), false},
		{"second frame with data", append(bytes.Clone(obj), c.Encode(nil, []byte("more"))...), 1 << 20, false},
		{"frame without content size", encodeWithoutSize(t, raw[:100]), len(raw), false},
		// Fewer than decodeSlack bytes over: the decoder has room for them, the length
		// check must refuse them.
		{"declares fewer bytes than it holds", understated(t, c, raw[:100], 90), len(raw), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Decode(nil, tt.obj, tt.maxSize)
			if (err == nil) != tt.ok {
				t.Fatalf("Decode error = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// understated is a frame holding raw (under 256 bytes) whose header declares only n.
func understated(t *testing.T, c *Codec, raw []byte, n byte) []byte {
	obj := c.Encode(nil, raw)
	// Magic, frame header descriptor, then a single-segment frame's one-byte size.
	if len(raw) >= 256 || obj[5] != byte(len(raw)) {
		t.Fatalf("unexpected frame layout % x", obj[:8])
	}
	obj[5] = n
	return obj
}

// encodeWithoutSize makes a valid zstd frame that does not declare its
// content size, as a foreign encoder might.
func encodeWithoutSize(t *testing.T, raw []byte) []byte {
	enc, err := zstd.NewWriter(nil, zstd.WithSingleSegment(false))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	obj := enc.EncodeAll(raw, nil)
	var h zstd.Header
	if err := h.Decode(obj); err != nil || h.HasFCS {
		t.Fatalf("test frame unexpectedly declares its size (err %v)", err)
	}
	return obj
}

func TestCodecTruncationAndCorruption(t *testing.T) {
	c := newCodec(t)
	raw := lowEntropyInput(4096)
	id := Sum(raw)
	obj := c.Encode(nil, raw)
	for n := range len(obj) {
		if _, err := c.Open(nil, id, obj[:n], len(raw)); err == nil {
			t.Fatalf("Open accepted the object truncated to %d of %d bytes", n, len(obj))
		}
	}
	// A flip may land on a bit zstd ignores (the frame header's unused bit,
	// or a table entry no symbol uses): zstd frames are not canonical. What
	// must never happen is a success with other bytes.
	for i := range obj {
		for _, bit := range []byte{0x01, 0x10, 0x80} {
			bad := bytes.Clone(obj)
			bad[i] ^= bit
			got, err := c.Decode(nil, bad, len(raw))
			if err == nil && !bytes.Equal(got, raw) {
				t.Fatalf("Decode returned other bytes without error for byte %d ^ %#x", i, bit)
			}
			got, err = c.Open(nil, id, bad, len(raw))
			if err == nil && !bytes.Equal(got, raw) {
				t.Fatalf("Open returned other bytes without error for byte %d ^ %#x", i, bit)
			}
		}
	}
}

func TestOpenChecksID(t *testing.T) {
	c := newCodec(t)
	raw := []byte("the bytes a chunk ID promises")
	obj := c.Encode(nil, raw)
	other := Sum([]byte("some other chunk"))
	_, err := c.Open(nil, other, obj, len(raw))
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with the wrong ID = %v, want ErrCorrupt", err)
	}
	if _, err := c.Open(nil, Sum(raw), obj, len(raw)); err != nil {
		t.Fatalf("Open with the right ID: %v", err)
	}
}

func TestCodecConcurrentUse(t *testing.T) {
	c := newCodec(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				raw := randomInput(1000 + 997*(g*20+i))
				got, err := c.Open(nil, Sum(raw), c.Encode(nil, raw), len(raw))
				if err == nil && !bytes.Equal(got, raw) {
					err = errors.New("round trip changed the bytes")
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func sizeName(n int) string { return fmt.Sprintf("%dKiB", n>>10) }

// BenchmarkDecodeSlack decodes code-like chunks into a buffer cut exactly to their
// size, as Decode once did, and into one with decodeSlack to spare, as it does now,
// and reports the ratio of the two speeds measured in the same run.
func BenchmarkDecodeSlack(b *testing.B) {
	c := newCodec(b)
	const size = 64 << 10
	obj := c.Encode(nil, codeLikeInput(size))
	var took [2]time.Duration // exact, slack
	dst := make([]byte, 0, size+decodeSlack)
	// In turns, so that neither gets the quieter half of the run.
	for turn := range 8 {
		extra := (turn % 2) * decodeSlack
		start := time.Now()
		for range (b.N + 3) / 4 {
			out, err := c.dec.DecodeAll(obj, dst[:0:size+extra])
			if err != nil || len(out) != size {
				b.Fatalf("decoded %d bytes: %v", len(out), err)
			}
		}
		took[turn%2] += time.Since(start)
	}
	mb := float64(size) * float64(4*((b.N+3)/4)) / 1e6
	exact, slack := mb/took[0].Seconds(), mb/took[1].Seconds()
	b.ReportMetric(exact, "exact-MB/s")
	b.ReportMetric(slack, "slack-MB/s")
	b.ReportMetric(slack/exact, "slack/exact")
}

func BenchmarkCodec(b *testing.B) {
	c := newCodec(b)
	for _, size := range []int{64 << 10, 256 << 10} {
		// Half incompressible, half repetitive, like a NAR of code and text.
		raw := append(randomInput(size/2), lowEntropyInput(size-size/2)...)
		obj := c.Encode(nil, raw)
		b.Run("Encode/"+sizeName(size), func(b *testing.B) {
			b.SetBytes(int64(size))
			var dst []byte
			for range b.N {
				dst = c.Encode(dst[:0], raw)
			}
		})
		b.Run("Decode/"+sizeName(size), func(b *testing.B) {
			b.SetBytes(int64(size))
			var dst []byte
			for range b.N {
				var err error
				if dst, err = c.Decode(dst[:0], obj, size); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestEncodeStored: an uncompressed object opens like any other, at every size around
// zstd's 128 KiB block limit, and truncated or flipped it never opens to other bytes.
func TestEncodeStored(t *testing.T) {
	c := newCodec(t)
	for _, size := range []int{0, 1, 1000, 128<<10 - 1, 128 << 10, 128<<10 + 1, 3 << 20, MaxChunkSize} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			raw := append(randomInput(size/2), lowEntropyInput(size-size/2)...)
			obj := EncodeStored([]byte("prefix"), raw)[len("prefix"):]
			got, err := c.Open(nil, Sum(raw), obj, size)
			if err != nil || !bytes.Equal(got, raw) {
				t.Fatalf("Open = %d bytes, %v", len(got), err)
			}
			if size > 0 {
				if _, err := c.Decode(nil, obj, size-1); err == nil {
					t.Fatal("an object larger than the limit decoded")
				}
			}
			if size > 1000 {
				return
			}
			for n := range len(obj) {
				if _, err := c.Open(nil, Sum(raw), obj[:n], size); err == nil {
					t.Fatalf("opened truncated to %d of %d bytes", n, len(obj))
				}
			}
			for i := range obj {
				bad := bytes.Clone(obj)
				bad[i] ^= 0x10
				if got, err := c.Open(nil, Sum(raw), bad, size); err == nil && !bytes.Equal(got, raw) {
					t.Fatalf("byte %d flipped opened to other bytes", i)
				}
			}
		})
	}
}
