package main

import (
	"bytes"
	"slices"
	"testing"
)

func TestSpread(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sizes  []int
		budget int64
		want   []int
	}{
		{"no budget takes all", []int{5, 5, 5}, 0, []int{0, 1, 2}},
		{"all fit", []int{5, 5, 5}, 15, []int{0, 1, 2}},
		{"every second", []int{5, 5, 5, 5}, 10, []int{0, 2}},
		{"every third", []int{5, 5, 5, 5, 5, 5}, 10, []int{0, 3}},
		{"sizes, not counts", []int{10, 1, 1, 1, 10, 1}, 12, []int{0, 3}},
		{"budget below the first item", []int{8, 8}, 4, []int{0}},
		{"empty", nil, 10, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := spread(tc.sizes, tc.budget); !slices.Equal(got, tc.want) {
				t.Errorf("spread(%v, %d) = %v, want %v", tc.sizes, tc.budget, got, tc.want)
			}
		})
	}
}

// split's two halves are disjoint and together the input: a dictionary is never
// judged on the chunks it was trained from.
func TestSplit(t *testing.T) {
	chunks := [][]byte{[]byte("aa"), []byte("bb"), []byte("cc"), []byte("dd"), []byte("ee")}
	idx, rest := split(chunks, 4)
	if !slices.Equal(idx, []int{0, 3}) {
		t.Fatalf("picked %v, want [0 3]", idx)
	}
	want := [][]byte{[]byte("bb"), []byte("cc"), []byte("ee")}
	if !slices.EqualFunc(rest, want, bytes.Equal) {
		t.Errorf("rest = %q, want %q", rest, want)
	}
}

func TestPieces(t *testing.T) {
	got := pieces([][]byte{[]byte("abcdefg"), []byte("xy"), []byte("")}, 3)
	want := [][]byte{[]byte("abc"), []byte("def"), []byte("g"), []byte("xy"), []byte("")}
	if !slices.EqualFunc(got, want, bytes.Equal) {
		t.Errorf("pieces = %q, want %q", got, want)
	}
}
