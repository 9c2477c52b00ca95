package p2p

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/internal/testkit"
)

// A chunkFault is how a fake peer that claims the NAR answers a chunk batch. It gets
// the asked IDs and the honest objects, and the host, to cut the connection.
type chunkFault func(s network.Stream, w *bufio.Writer, ids [][32]byte, x *nar, h host.Host)

// TestMisbehavingChunkPeers is the fault matrix for LAN and DHT peers serving chunks:
// each fake peer says it holds the NAR, then answers its batches badly. Whatever it
// does, the NAR must assemble and verify with the store's help, a peer that broke the
// protocol or lied must be dropped with a log line saying why, and nothing may be left
// running once the nodes close. Stalls, frozen questions, floods and missing chunks
// have their own tests (transfer_test.go, peer_test.go).
func TestMisbehavingChunkPeers(t *testing.T) {
	x := makeNAR(t, 61, 1<<20)
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	other := makeNAR(t, 62, 1<<20)
	var otherObjs [][]byte
	for _, o := range other.objs {
		otherObjs = append(otherObjs, o)
	}
	honest := func(w *bufio.Writer, ids [][32]byte) error {
		for _, id := range ids {
			if err := writeAnswer(w, x.objs[chunk.ID(id)], true); err != nil {
				return err
			}
		}
		return nil
	}
	tests := []struct {
		name    string
		fault   chunkFault
		dropped bool
		wantLog string
	}{
		{"lies: wrong bytes under the ID", func(_ network.Stream, w *bufio.Writer, ids [][32]byte, _ *nar, _ host.Host) {
			for i := range ids {
				_ = writeAnswer(w, codec.Encode(nil, []byte(fmt.Sprintf("not chunk %d", i))), true)
			}
		}, true, "failed its check"},
		{"lies: another NAR's chunk objects", func(_ network.Stream, w *bufio.Writer, ids [][32]byte, _ *nar, _ host.Host) {
			for i := range ids {
				_ = writeAnswer(w, otherObjs[i%len(otherObjs)], true)
			}
		}, true, "failed its check"},
		{"lies: a truncated zstd frame", func(_ network.Stream, w *bufio.Writer, ids [][32]byte, x *nar, _ host.Host) {
			for _, id := range ids {
				o := x.objs[chunk.ID(id)]
				_ = writeAnswer(w, o[:len(o)/2], true)
			}
		}, true, "failed its check"},
		{"unknown status byte", func(_ network.Stream, w *bufio.Writer, _ [][32]byte, _ *nar, _ host.Host) {
			_ = w.WriteByte(7)
		}, true, "unknown status 7"},
		{"resets mid-batch", func(s network.Stream, w *bufio.Writer, ids [][32]byte, _ *nar, _ host.Host) {
			_ = honest(w, ids[:len(ids)/2])
			_ = w.Flush()
			_ = s.Reset()
		}, true, "chunk batch failed"},
		{"closes cleanly mid-batch", func(s network.Stream, w *bufio.Writer, ids [][32]byte, _ *nar, _ host.Host) {
			_ = honest(w, ids[:len(ids)/2])
			_ = w.Flush()
			_ = s.Close()
		}, true, "EOF"},
		{"closes the connection mid-object", func(s network.Stream, w *bufio.Writer, ids [][32]byte, x *nar, h host.Host) {
			o := x.objs[chunk.ID(ids[0])]
			_ = w.WriteByte(statusFound)
			_, _ = w.Write(append(uvarint(uint64(len(o))), o[:len(o)/3]...))
			_ = w.Flush()
			_ = h.Network().ClosePeer(s.Conn().RemotePeer())
		}, true, "chunk batch failed"},
		{"has nothing after all", func(_ network.Stream, w *bufio.Writer, ids [][32]byte, _ *nar, _ host.Host) {
			for range ids {
				_ = writeAnswer(w, nil, false)
			}
		}, false, ""},
	}
	// One node and host first, so what libp2p starts once per process is not counted
	// as a row's leak.
	t.Run("warm up", func(t *testing.T) {
		n := lanNode(t, &chunkBackend{}, nil)
		connect(t, rawHost(t), n.AddrInfo())
	})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g0, fd0 := testkit.Resources(t)
			logs := &testkit.SyncBuffer{}
			t.Run("run", func(t *testing.T) {
				n := lanNode(t, &chunkBackend{}, func(c *Config) {
					c.BatchTimeout, c.HaveTimeout, c.NarBudget = 5*time.Second, 5*time.Second, time.Minute
					c.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
				})
				f := rawHost(t)
				fakeAnswers(f, ProtoHave, []byte{1}, false)
				var mu sync.Mutex
				batches := 0
				f.SetStreamHandler(ProtoChunks, func(s network.Stream) {
					r := bufio.NewReader(s)
					var narHash [32]byte
					if _, err := io.ReadFull(r, narHash[:]); err != nil {
						_ = s.Reset()
						return
					}
					ids, err := readHashes(r, MaxBatch)
					if err != nil {
						_ = s.Reset()
						return
					}
					mu.Lock()
					batches++
					mu.Unlock()
					w := bufio.NewWriter(s)
					tc.fault(s, w, ids, x, f)
					_ = w.Flush()
					_ = s.Close() // what the fault sent arrives whole, then the stream ends
				})
				introduce(t, n, peer.AddrInfo{ID: f.ID(), Addrs: f.Addrs()})

				counts := assembleVia(t, n, x)
				mu.Lock()
				asked := batches
				mu.Unlock()
				if asked == 0 {
					t.Fatal("the fake peer was never asked: the row tests nothing")
				}
				if counts.get("store") == 0 {
					t.Error("nothing came from the store")
				}
				if got := n.blocks.blocked(f.ID()); got != tc.dropped {
					t.Errorf("peer dropped: %v, want %v", got, tc.dropped)
				}
				if tc.dropped && !strings.Contains(logs.String(), "dropping peer") {
					t.Errorf("no log line says the peer was dropped:\n%s", logs)
				}
				if !strings.Contains(logs.String(), tc.wantLog) {
					t.Errorf("no log line contains %q:\n%s", tc.wantLog, logs)
				}
			})
			testkit.Settle(t, g0, fd0)
		})
	}
}
