package p2p

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunk"
)

// The p2p decoders read bytes a peer chose. These targets feed them arbitrary input
// and check the bounds each one promises: no panic, no answer longer than its limit,
// no count outside its range, and a clean error on truncation.

func answer(body []byte, ok bool) []byte {
	var b bytes.Buffer
	w := bufio.NewWriter(&b)
	if err := writeAnswer(w, body, ok); err != nil {
		panic(err)
	}
	_ = w.Flush()
	return b.Bytes()
}

// FuzzReadAnswer covers the answers to narinfo, manifest and chunk requests: a status
// byte, then a frame bounded by the protocol's limit. The selector picks the limit.
func FuzzReadAnswer(f *testing.F) {
	f.Add(byte(0), answer([]byte("StorePath: /nix/store/x\n"), true))
	f.Add(byte(1), answer(bytes.Repeat([]byte{7}, 300), true))
	f.Add(byte(2), answer(nil, false))
	f.Add(byte(3), []byte{statusFound, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add(byte(0), []byte{9})
	f.Fuzz(func(t *testing.T, sel byte, in []byte) {
		limit := []int{MaxNarInfo, MaxManifest, maxObject, 16}[sel%4]
		src := bytes.NewReader(in)
		r := bufio.NewReader(src)
		body, ok, err := readAnswer(r, limit)
		consumed := len(in) - src.Len() - r.Buffered()
		switch {
		case err != nil && (ok || body != nil):
			t.Fatalf("error %v with ok=%v and %d bytes", err, ok, len(body))
		case len(body) > limit:
			t.Fatalf("answer of %d bytes passed limit %d", len(body), limit)
		case ok && !bytes.Equal(body, in[consumed-len(body):consumed]):
			// The length may be spelled with redundant varint bytes (harmless: it is
			// bounded all the same), so compare the body with what ended the read.
			t.Fatal("the accepted answer is not the bytes that ended the frame")
		}
	})
}

// FuzzChunkBatchAnswer reads a whole answer to a chunk batch the way narSource.fetch
// does: one answer per asked ID, each at most maxObject, stopping at the first error.
func FuzzChunkBatchAnswer(f *testing.F) {
	var seed []byte
	seed = append(seed, answer([]byte("obj-a"), true)...)
	seed = append(seed, answer(nil, false)...)
	seed = append(seed, answer(bytes.Repeat([]byte{1}, 1000), true)...)
	f.Add(uint8(3), seed)
	f.Add(uint8(64), seed)
	f.Add(uint8(1), []byte{statusFound})
	f.Fuzz(func(t *testing.T, n uint8, in []byte) {
		r := bufio.NewReader(bytes.NewReader(in))
		total := 0
		for range int(n)%MaxBatch + 1 {
			obj, ok, err := readAnswer(r, maxObject)
			if err != nil {
				return
			}
			if ok {
				total += binary.PutUvarint(make([]byte, binary.MaxVarintLen64), uint64(len(obj))) + len(obj) + 1
			} else {
				total++
			}
		}
		if total > len(in) {
			t.Fatalf("read %d bytes of answers from %d bytes of input", total, len(in))
		}
	})
}

// FuzzReadRequest covers what a server reads from an asking peer: the have request
// (a count and NarHashes) and the chunk request (a NarHash, a count and chunk IDs).
func FuzzReadRequest(f *testing.F) {
	h := [32]byte{1, 2, 3}
	f.Add(false, appendHashes(nil, [][32]byte{h, h}))
	f.Add(true, appendHashes(h[:], [][32]byte{h}))
	f.Add(false, []byte{0})
	f.Add(true, append(h[:], 0xff, 0xff, 0xff, 0xff, 0x0f))
	f.Fuzz(func(t *testing.T, chunks bool, in []byte) {
		r := bufio.NewReader(bytes.NewReader(in))
		limit := MaxHave
		if chunks {
			limit = MaxBatch
			var nar [32]byte
			if _, err := io.ReadFull(r, nar[:]); err != nil {
				return
			}
		}
		hs, err := readHashes(r, limit)
		if err != nil {
			return
		}
		if len(hs) == 0 || len(hs) > limit {
			t.Fatalf("%d hashes accepted, want 1..%d", len(hs), limit)
		}
	})
}

// FuzzAnnounceList feeds arbitrary bytes as the announced-NAR list a restarted daemon
// reads back: it loads within its bound or fails with an error, and what loads
// survives a save and load unchanged.
func FuzzAnnounceList(f *testing.F) {
	f.Add([]byte(announceHeader + "\n" + "0102030000000000000000000000000000000000000000000000000000000000 1700000000\n"))
	f.Add([]byte(announceHeader + "\n"))
	f.Add([]byte("shoal-dht-announced 2\n"))
	dir := f.TempDir()
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, in []byte) {
		path := filepath.Join(dir, "announced")
		if err := os.WriteFile(path, in, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := announcerConfig{max: 4, path: path, rate: 1, interval: time.Hour, log: log}
		a, err := newAnnouncer(cfg)
		if err != nil {
			return
		}
		if a.order.Len() > cfg.max {
			t.Fatalf("loaded %d NARs, max %d", a.order.Len(), cfg.max)
		}
		a.dirty = true
		if err := a.save(); err != nil {
			t.Fatal(err)
		}
		b, err := newAnnouncer(cfg)
		if err != nil {
			t.Fatalf("a saved list does not load again: %v", err)
		}
		if a.order.Len() != b.order.Len() {
			t.Fatalf("save and load changed the list from %d to %d NARs", a.order.Len(), b.order.Len())
		}
	})
}

// FuzzReadFleetKey feeds arbitrary fleet key files: the key is read or refused with an
// error, and an accepted key is 32 bytes and not all zeros.
func FuzzReadFleetKey(f *testing.F) {
	f.Add([]byte("/key/swarm/psk/1.0.0/\n/base16/\n" + "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"))
	f.Add([]byte("/key/swarm/psk/1.0.0/\n/base64/\nAAAA\n"))
	f.Add([]byte("/key/swarm/psk/1.0.0/\n/bin/\n0123456789abcdef0123456789abcdef"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, in []byte) {
		path := filepath.Join(dir, "fleet.key")
		if err := os.WriteFile(path, in, 0o600); err != nil {
			t.Fatal(err)
		}
		psk, err := ReadFleetKey(path)
		if err != nil {
			return
		}
		if len(psk) != 32 || bytes.Equal(psk, make([]byte, 32)) {
			t.Fatalf("accepted a weak key %x", []byte(psk))
		}
	})
}

// FuzzReadDeltaRequest covers the delta request a server reads from an asking peer:
// what it accepts names 1..MaxDeltaBases bases and encodes back to the bytes read.
func FuzzReadDeltaRequest(f *testing.F) {
	id := chunk.Sum([]byte("target"))
	q := deltaRequest{nar: [32]byte{1}, target: id, bases: []chunk.ID{chunk.Sum([]byte("base"))}}
	f.Add(q.append(nil))
	f.Add(append(q.append(nil)[:96], 0))
	f.Add(append(q.append(nil)[:96], 0xff, 0xff, 0xff, 0xff, 0x0f))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bufio.NewReader(bytes.NewReader(in))
		got, err := readDeltaRequest(r)
		if err != nil {
			return
		}
		if len(got.bases) == 0 || len(got.bases) > chunk.MaxDeltaBases {
			t.Fatalf("%d bases accepted, want 1..%d", len(got.bases), chunk.MaxDeltaBases)
		}
		if enc := got.append(nil); !bytes.HasPrefix(in, enc[:96]) {
			t.Fatalf("request fields do not match the bytes read")
		}
	})
}
