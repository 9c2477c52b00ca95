package chunk

import (
	"strings"
	"testing"
)

func TestSumIsBLAKE3(t *testing.T) {
	// BLAKE3-256 of the empty input and of "abc", from the BLAKE3 test vectors.
	tests := []struct{ in, want string }{
		{"", "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"},
		{"abc", "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"},
	}
	for _, tt := range tests {
		if got := Sum([]byte(tt.in)).String(); got != tt.want {
			t.Errorf("Sum(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestParseID(t *testing.T) {
	valid := Sum([]byte("shoal")).String()
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"round trip", valid, true},
		{"empty", "", false},
		{"short", valid[:63], false},
		{"long", valid + "0", false},
		{"upper case", strings.ToUpper(valid), false},
		{"non-hex", "g" + valid[1:], false},
		{"space", " " + valid[1:], false},
		{"prefix", "0x" + valid[2:], false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := ParseID(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseID(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if tt.ok && id.String() != tt.in {
				t.Fatalf("ParseID(%q).String() = %s", tt.in, id)
			}
		})
	}
}

func BenchmarkSum(b *testing.B) {
	for _, size := range []int{64 << 10, 256 << 10} {
		b.Run(sizeName(size), func(b *testing.B) {
			data := randomInput(size)
			b.SetBytes(int64(size))
			for range b.N {
				Sum(data)
			}
		})
	}
}
