package delta

import (
	"slices"
	"testing"

	"github.com/shoal-nix/shoal/chunk"
)

func nar(name string, h byte) NAR {
	return NAR{StorePath: "/nix/store/" + string(rune('a'+h%26)) + "0000000000000000000000000000000-" + name, NarHash: [32]byte{h}}
}

func TestPickBase(t *testing.T) {
	store := []NAR{
		nar("go-1.25.0", 1), nar("go-1.25.1", 2), nar("go-1.25.3", 3), nar("go-1.26rc1", 4),
		nar("go-1.25.1-doc", 5), nar("gopls-0.16.0", 6), nar("hello-2.12", 7),
		nar("foo-1.0pre2", 8), nar("foo-1.0", 9), nar("bar", 10),
	}
	tests := []struct {
		name, target string
		hash         byte
		want         string // "" means no base
	}{
		{"previous release", "go-1.25.2", 20, "go-1.25.1"},
		{"highest below, not the newest", "go-1.25.4", 20, "go-1.25.3"},
		{"release candidate sorts below the release", "go-1.26.0", 20, "go-1.26rc1"},
		{"oldest version falls back to the newest", "go-1.24.9", 20, "go-1.26rc1"},
		{"a rebuild of a published version: that version", "go-1.25.0", 20, "go-1.25.0"},
		{"the NAR itself is never its base", "go-1.25.1", 2, "go-1.25.0"},
		{"outputs match outputs", "go-1.25.3-doc", 20, "go-1.25.1-doc"},
		{"pre-release is below the release", "foo-1.0", 9, "foo-1.0pre2"},
		{"release above pre-release", "foo-1.0.1", 20, "foo-1.0"},
		{"pre-release below everything: newest", "foo-1.0pre1", 20, "foo-1.0"},
		{"another package never", "gopls-0.17.0", 20, "gopls-0.16.0"},
		{"no version: same name", "bar", 20, "bar"},
		{"unknown package", "zlib-1.3", 20, ""},
		{"same-name prefix is another package", "hello-world-1.0", 20, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			target := nar(tc.target, tc.hash)
			got, ok := PickBase(target.StorePath, target.NarHash, store)
			if tc.want == "" {
				if ok {
					t.Fatalf("base %s, want none", got.StorePath)
				}
				return
			}
			if !ok || got.StorePath[len(got.StorePath)-len(tc.want)-1:] != "-"+tc.want {
				t.Fatalf("base %q (ok %v), want %s", got.StorePath, ok, tc.want)
			}
		})
	}
	// The choice does not depend on the candidates' order.
	rev := slices.Clone(store)
	slices.Reverse(rev)
	for _, target := range []string{"go-1.25.2", "go-1.24.0", "foo-1.1"} {
		n := nar(target, 20)
		a, _ := PickBase(n.StorePath, n.NarHash, store)
		b, _ := PickBase(n.StorePath, n.NarHash, rev)
		if a != b {
			t.Errorf("%s: base %s in one order, %s in the other", target, a.StorePath, b.StorePath)
		}
	}
}

// Indexes are in dictionary order: farthest from the place first, its chunk last.
func TestAround(t *testing.T) {
	l := Layout{NarSize: 1000, Offsets: []uint64{0, 100, 200, 300, 400, 500, 600, 700, 800, 900}, Sizes: []uint32{100, 100, 100, 100, 100, 100, 100, 100, 100, 100}}
	tests := []struct {
		name    string
		narSize uint64
		off     uint64
		size    uint32
		n       int
		want    []int
	}{
		{"same place", 1000, 450, 10, 3, []int{3, 5, 4}},
		{"relative, not absolute", 2000, 900, 20, 3, []int{3, 5, 4}},
		{"five", 1000, 450, 10, 5, []int{2, 6, 3, 5, 4}},
		{"one", 1000, 450, 10, 1, []int{4}},
		{"two, middle in the second half", 1000, 460, 10, 2, []int{5, 4}},
		{"two, middle in the first half", 1000, 420, 10, 2, []int{3, 4}},
		{"clamped at the start", 1000, 0, 10, 3, []int{2, 1, 0}},
		{"clamped at the end", 1000, 990, 10, 3, []int{7, 8, 9}},
		{"past the end of a smaller base", 5000, 4990, 10, 3, []int{7, 8, 9}},
		{"more than the base has", 1000, 0, 10, 20, []int{7, 6, 5, 4, 3, 2, 1, 0}},
		{"none asked", 1000, 0, 10, 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := l.Around(tc.narSize, tc.off, tc.size, tc.n); !slices.Equal(got, tc.want) {
				t.Fatalf("Around = %v, want %v", got, tc.want)
			}
		})
	}
	// Large base chunks: the dictionary stays within MaxDictSize.
	big := Layout{NarSize: 3 * 2 << 20, Offsets: []uint64{0, 2 << 20, 4 << 20}, Sizes: []uint32{2 << 20, 2 << 20, 2 << 20}}
	got := big.Around(big.NarSize, 3<<20, 1, 3)
	var dict int
	for _, i := range got {
		dict += int(big.Sizes[i])
	}
	if !slices.Contains(got, 1) || dict > chunk.MaxDictSize {
		t.Fatalf("Around = %v (%d bytes), want chunk 1 and at most %d bytes", got, dict, chunk.MaxDictSize)
	}
	if (Layout{}).Around(100, 0, 10, 3) != nil {
		t.Fatal("an empty base gave base chunks")
	}
}

func TestWorth(t *testing.T) {
	for _, tc := range []struct {
		delta, full int
		want        bool
	}{{90, 100, true}, {91, 100, false}, {0, 100, false}, {5, 100, true}} {
		if got := Worth(tc.delta, tc.full); got != tc.want {
			t.Errorf("Worth(%d, %d) = %v", tc.delta, tc.full, got)
		}
	}
}

func TestAligner(t *testing.T) {
	l := Layout{NarSize: 1000}
	var ids []chunk.ID
	for i := range 10 {
		l.Offsets = append(l.Offsets, uint64(100*i))
		l.Sizes = append(l.Sizes, 100)
		ids = append(ids, chunk.Sum([]byte{byte(i)}))
	}
	fresh := func(s string) chunk.ID { return chunk.Sum([]byte(s)) }
	a := l.NewAligner(ids, 1300)
	steps := []struct {
		name   string
		id     chunk.ID
		off    uint64
		size   uint32
		bases  []int
		inBase bool
	}{
		// Before any shared chunk: the relative offset (50 of 1300 is 38 of 1000).
		{"no anchor yet", fresh("x"), 0, 100, []int{2, 1, 0}, false},
		{"shared", ids[1], 100, 100, nil, true},
		// 300 bytes inserted after base chunk 1: relative offsets would say chunk 3,
		// the distance from the anchor says chunk 2.
		{"after an anchor", fresh("y"), 200, 100, []int{1, 3, 2}, false},
		{"inserted", fresh("z"), 300, 300, []int{3, 5, 4}, false},
		{"shared again", ids[5], 600, 100, nil, true},
		{"after the second anchor", fresh("w"), 700, 100, []int{5, 7, 6}, false},
		{"past the base's end", fresh("v"), 1200, 100, []int{7, 8, 9}, false},
	}
	for _, s := range steps {
		bases, in := a.Next(s.id, s.off, s.size, 3)
		if in != s.inBase || !slices.Equal(bases, s.bases) {
			t.Errorf("%s: Next = %v, %v; want %v, %v", s.name, bases, in, s.bases, s.inBase)
		}
	}
}
