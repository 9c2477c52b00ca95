package chunk

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"strings"
	"testing"

	"github.com/zeebo/blake3"
)

// printGolden prints the current vectors in Go syntax. Use it only to pin a
// NEW chunker identity: for an existing one, a changed vector means published
// chunks no longer deduplicate, and the code is wrong, not the vector.
var printGolden = flag.Bool("golden.print", false, "print the golden chunking vectors instead of checking them")

// golden pins the cut points and IDs of one (params, input) pair.
type golden struct {
	name    string
	params  Params
	input   func() []byte
	inputID string // BLAKE3-256 of the input, to check a generator first
	count   int
	lengths []int    // the first len(lengths) chunk lengths
	ids     []string // the first len(ids) chunk IDs
	// digest is the BLAKE3-256, in hex, of every chunk's length as a
	// little-endian uint64 followed by its ID, in order.
	digest string
}

var goldens = []golden{
	{
		name:    "default/random-4MiB",
		params:  DefaultParams(),
		input:   func() []byte { return randomInput(4 << 20) },
		inputID: "d51265686b4729dd8895788f839b36710f53dfb14516dc978db6375a324ffd46",
		count:   58,
		lengths: []int{
			28128, 82036, 72057, 82576, 52231, 50371, 98119, 92333,
			27009, 113882, 80242, 70100, 77250, 65957, 75660, 38239,
			50387, 82666, 46500, 141724, 66485, 70950, 83623, 70133,
			118117, 120439, 43039, 92391, 78372, 80072, 78812, 66868,
			88098, 72678, 77771, 68106, 36286, 73032, 62005, 68584,
			69821, 78553, 78074, 85935, 47664, 70679, 136630, 67652,
			80361, 75148, 66063, 72827, 96569, 22608, 89434, 80008,
			26984, 5966,
		},
		ids: []string{
			"4151b010f62237f51f687e297ac3a11a84d4c398c85fd49f7da1ea1cc874d712",
			"33c7cc1bec13db25ba64eab709c183b6d9f9a6598475751ada4ad967b4487968",
			"1a9acf12610fca6c23bc4ab4be149cf63f6bb00838879aab0a77563ae13abf26",
		},
		digest: "1868b82a42f90d6d36787c664438bee32cc236d575d636cbb100ef37a5701fe0",
	},
	{
		name:    "default/low-entropy-4MiB",
		params:  DefaultParams(),
		input:   func() []byte { return lowEntropyInput(4 << 20) },
		inputID: "7d55e13914f447d49b2ce0e73270d19ac397aea2e091dce86a98f099cf3a4684",
		count:   20,
		lengths: []int{
			262144, 262144, 262144, 262144, 237644, 145267, 262144, 262144,
			262144, 97136, 111422, 237491, 262144, 262144, 88507, 262144,
			110680, 262144, 262144, 20429,
		},
		ids: []string{
			"f6ac8f946735b6c7219641e056b6e3815d5959713fdd9bdf3d99386ea12a7f9e",
			"20b2930632d748dda994bcf33654774fd9ebefe40c481adae1fc45156a504cf0",
			"40d1bf6e54d23d8bd57427ae3aa029288b51c1999dcc2aa7023ae0f3770ffe6c",
		},
		digest: "b38585855a0a47334f29c0569f01ceb4b2c0f967925c4c7d67f3ba3506587523",
	},
	{
		name:    "small/random-64KiB",
		params:  smallParams,
		input:   func() []byte { return randomInput(64 << 10) },
		inputID: "4d7465c093899d3dd3fdfa494a39fb63edb5c3130f7d9ce917f0cd73305650f0",
		count:   227,
		lengths: []int{
			90, 72, 308, 103, 322, 186, 385, 283,
			271, 365, 261, 266, 278, 333, 264, 396,
		},
		ids: []string{
			"5acee7cb81f533208444b061ff3b99ba2c20e95db8abd50dc9ada595117c933a",
			"88ff55bd886ecb856d28057a1697106e63b136430d95c9f438ab9073bcc15690",
			"4e30eab0bf8639069b10bfbe010a1495bf8b0881080b6c8700b0a75f2a736534",
		},
		digest: "29fa380063e96eddb3066f72d084730aec792a4cd6741af0e2094582bc9b2f9c",
	},
	{
		name:    "small/low-entropy-64KiB",
		params:  smallParams,
		input:   func() []byte { return lowEntropyInput(64 << 10) },
		inputID: "904ef1ef82f051e4aebb114c2ed830c173e43106aacc6a5316fafec7262135ec",
		count:   226,
		lengths: []int{
			280, 290, 290, 290, 290, 290, 348, 290,
			290, 290, 290, 290, 290, 290, 290, 290,
		},
		ids: []string{
			"cecd9e3c791020ed7e1474d071203186021d4faeb78f2ad2bad2b2dbc8f94ec8",
			"25f50ba09bc8462c946bbc4a4922a232fbccfa87ded91f3d025bc9b209aa5865",
			"25f50ba09bc8462c946bbc4a4922a232fbccfa87ded91f3d025bc9b209aa5865",
		},
		digest: "2282125933711302602c596277e9be57dc1ab75686ed2461347b1b41118e4116",
	},
}

func TestSplitMix64(t *testing.T) {
	// The first outputs of SplitMix64 seeded with 1, as published with the
	// generator; they pin randomInput independently of this package.
	want := []uint64{0x910a2dec89025cc1, 0xbeeb8da1658eec67, 0xf893a2eefb32555e}
	s := splitMix64(1)
	for i, w := range want {
		if got := s.next(); got != w {
			t.Fatalf("output %d = %#x, want %#x", i, got, w)
		}
	}
	if got := randomInput(9); !bytes.Equal(got, []byte{0xc1, 0x5c, 0x02, 0x89, 0xec, 0x2d, 0x0a, 0x91, 0x67}) {
		t.Fatalf("randomInput(9) = %x, want little-endian outputs truncated", got)
	}
}

func chunkDigest(chunks [][]byte) string {
	h := blake3.New()
	var n [8]byte
	for _, c := range chunks {
		binary.LittleEndian.PutUint64(n[:], uint64(len(c)))
		id := Sum(c)
		h.Write(n[:])
		h.Write(id[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestGoldenVectors(t *testing.T) {
	for _, g := range goldens {
		t.Run(g.name, func(t *testing.T) {
			in := g.input()
			if id := Sum(in).String(); id != g.inputID {
				t.Fatalf("input hashes to %s, want %s: the generator changed", id, g.inputID)
			}
			chunks := chunkAll(t, bytes.NewReader(in), g.params)
			if *printGolden {
				t.Log(formatGolden(g, chunks))
				return
			}
			if len(chunks) != g.count {
				t.Errorf("%d chunks, want %d", len(chunks), g.count)
			}
			got := lengths(chunks)
			for i, want := range g.lengths {
				if i >= len(got) || got[i] != want {
					t.Fatalf("chunk lengths %v\nwant prefix     %v", got, g.lengths)
				}
			}
			for i, want := range g.ids {
				if i >= len(chunks) {
					t.Fatalf("no chunk %d", i)
				}
				if id := Sum(chunks[i]).String(); id != want {
					t.Errorf("chunk %d: ID %s, want %s", i, id, want)
				}
			}
			if d := chunkDigest(chunks); d != g.digest {
				t.Errorf("digest %s, want %s", d, g.digest)
			}
		})
	}
}

func formatGolden(g golden, chunks [][]byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n\t\tcount: %d,\n\t\tlengths: []int{", len(chunks))
	n := len(chunks)
	if n > 64 {
		n = 16
	}
	for i, c := range chunks[:n] {
		if i%8 == 0 {
			b.WriteString("\n\t\t\t")
		} else {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%d,", len(c))
	}
	b.WriteString("\n\t\t},\n\t\tids: []string{\n")
	for _, c := range chunks[:min(3, len(chunks))] {
		fmt.Fprintf(&b, "\t\t\t%q,\n", Sum(c).String())
	}
	fmt.Fprintf(&b, "\t\t},\n\t\tdigest: %q,\n", chunkDigest(chunks))
	return b.String()
}
