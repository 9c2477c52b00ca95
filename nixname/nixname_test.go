package nixname

import "testing"

func TestSplit(t *testing.T) {
	tests := []struct{ in, name, version string }{
		{"go-1.26.3", "go", "1.26.3"},
		{"hello", "hello", ""},
		{"hello-world-1.0", "hello-world", "1.0"},
		{"xorg-server-21.1", "xorg-server", "21.1"},
		{"openssl-3.0.13-dev", "openssl", "3.0.13-dev"},
		{"python3.12-requests-2.31.0", "python3.12-requests", "2.31.0"},
		{"foo-", "foo-", ""},
		{"foo-_bar", "foo", "_bar"},
	}
	for _, tc := range tests {
		if n, v := Split(tc.in); n != tc.name || v != tc.version {
			t.Errorf("Split(%q) = %q, %q; want %q, %q", tc.in, n, v, tc.name, tc.version)
		}
	}
}

func TestFromStorePath(t *testing.T) {
	for in, want := range map[string]string{
		"/nix/store/0000000000000000000000000000000a-go-1.25.0": "go-1.25.0",
		"0000000000000000000000000000000a-go-1.25.0":            "go-1.25.0",
		"go": "go",
	} {
		if got := FromStorePath(in); got != want {
			t.Errorf("FromStorePath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSplitOutput(t *testing.T) {
	tests := []struct{ in, ver, suffix string }{
		{"1.2-dev", "1.2", "dev"},
		{"1.2", "1.2", ""},
		{"1.2-3", "1.2-3", ""},
		{"2024-01-01-doc", "2024-01-01", "doc"},
	}
	for _, tc := range tests {
		if v, s := SplitOutput(tc.in); v != tc.ver || s != tc.suffix {
			t.Errorf("SplitOutput(%q) = %q, %q; want %q, %q", tc.in, v, s, tc.ver, tc.suffix)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	// Nix's own table (src/libstore-tests/names.cc), then cases it implies.
	tests := []struct {
		a, b string
		want int
	}{
		{"1.0", "2.3", -1},
		{"2.1", "2.3", -1},
		{"2.3", "2.3", 0},
		{"2.5", "2.3", 1},
		{"3.1", "2.3", 1},
		{"2.3.1", "2.3", 1},
		{"2.3.1", "2.3a", 1},
		{"2.3pre1", "2.3", -1},
		{"2.3pre3", "2.3pre12", -1},
		{"2.3a", "2.3c", -1},
		{"2.3pre1", "2.3c", -1},
		{"2.3pre1", "2.3q", -1},

		{"2.3", "2.3a", -1},   // a missing component is older than a word
		{"2.3pre", "2.3", -1}, // except "pre"
		{"1.25.9", "1.25.10", -1},
		{"1.25rc2", "1.25.0", -1},
		{"1.02", "1.2", 0},
		{"1.0-rc1", "1.0.rc1", 0}, // separators are only separators
		{"123456789012345678901234567890", "9", 1},
	}
	for _, tc := range tests {
		if c := CompareVersions(tc.a, tc.b); c != tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.a, tc.b, c, tc.want)
		}
		if c := CompareVersions(tc.b, tc.a); c != -tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.b, tc.a, c, -tc.want)
		}
	}
}
