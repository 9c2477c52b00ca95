package nixcache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// realNarInfos are narinfos exactly as cache.nixos.org serves them.
func realNarInfos(t testing.TB) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "*.narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 6 {
		t.Fatalf("found %d narinfos in testdata, want 6", len(paths))
	}
	out := make(map[string][]byte)
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimSuffix(filepath.Base(p), ".narinfo")] = data
	}
	return out
}

func TestParseRealNarInfos(t *testing.T) {
	for hashPart, raw := range realNarInfos(t) {
		t.Run(hashPart, func(t *testing.T) {
			n, err := ParseNarInfo(raw)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(n.Raw, raw) {
				t.Error("Raw differs from the input")
			}
			if n.HashPart() != hashPart {
				t.Errorf("HashPart() = %q, want %q", n.HashPart(), hashPart)
			}
			// Every field must match its line, re-derived independently.
			for _, line := range strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n") {
				key, value, _ := strings.Cut(line, ": ")
				switch key {
				case "StorePath":
					if n.StorePath != value {
						t.Errorf("StorePath = %q, want %q", n.StorePath, value)
					}
				case "URL":
					if n.URL != value {
						t.Errorf("URL = %q, want %q", n.URL, value)
					}
				case "Compression":
					if n.Compression != value || n.EffectiveCompression() != value {
						t.Errorf("Compression = %q/%q, want %q", n.Compression, n.EffectiveCompression(), value)
					}
				case "NarHash":
					if n.NarHashString() != value {
						t.Errorf("NarHashString() = %q, want %q", n.NarHashString(), value)
					}
				case "NarSize":
					if got := uintString(n.NarSize); got != value {
						t.Errorf("NarSize = %s, want %s", got, value)
					}
				case "FileSize":
					if got := uintString(n.FileSize); got != value {
						t.Errorf("FileSize = %s, want %s", got, value)
					}
				case "References":
					if strings.Join(n.References, " ") != value {
						t.Errorf("References = %q, want %q", n.References, value)
					}
				case "Sig":
					if len(n.Sigs) != 1 || n.Sigs[0] != value {
						t.Errorf("Sigs = %q, want [%q]", n.Sigs, value)
					}
				}
			}
		})
	}
}

func uintString(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

const (
	testHash  = "2bcv91i8fahqghn8dmyr791iaycbsjdd"
	testPath  = "/nix/store/" + testHash + "-hello-2.12.2"
	testNix32 = "0rmalafq2v3k7a83jcmh8hnh5kilbbzqf1rkzsdz0fv1nayscp04"
)

// minimal builds a narinfo from lines, each ending in "\n".
func minimal(lines ...string) []byte {
	return []byte(strings.Join(lines, "\n") + "\n")
}

func baseLines() []string {
	return []string{
		"StorePath: " + testPath,
		"URL: nar/x.nar.xz",
		"Compression: xz",
		"NarHash: sha256:" + testNix32,
		"NarSize: 274568",
	}
}

func replaceLine(lines []string, key, line string) []string {
	out := make([]string, 0, len(lines))
	for _, l := range lines {
		if strings.HasPrefix(l, key+":") {
			if line != "" {
				out = append(out, line)
			}
			continue
		}
		out = append(out, l)
	}
	return out
}

func TestParseNarInfoErrors(t *testing.T) {
	b := baseLines()
	hexHash := func() string {
		d, _ := nixbase32.DecodeString(testNix32)
		return hex.EncodeToString(d)
	}()
	tests := []struct {
		name    string
		raw     []byte
		wantErr string // "" means it must parse
	}{
		{"minimal ok", minimal(b...), ""},
		{"base16 NarHash ok", minimal(replaceLine(b, "NarHash", "NarHash: sha256:"+hexHash)...), ""},
		{"unknown key ignored", minimal(append(b, "Frobnicate: yes", "X-Thing: 1")...), ""},
		{"duplicate unknown key ignored", minimal(append(b, "X: 1", "X: 2")...), ""},
		{"several Sig ok", minimal(append(b, "Sig: a:AAAA", "Sig: b:BBBB")...), ""},
		{"empty References ok", minimal(append(b, "References: ")...), ""},
		{"unknown-deriver ok", minimal(append(b, "Deriver: unknown-deriver")...), ""},
		{"no NarHash", minimal(replaceLine(b, "NarHash", "")...), "no NarHash"},
		{"no NarSize", minimal(replaceLine(b, "NarSize", "")...), "no NarSize"},
		{"no URL", minimal(replaceLine(b, "URL", "")...), "no URL"},
		{"no StorePath", minimal(replaceLine(b, "StorePath", "")...), "no StorePath"},
		{"empty", nil, "empty"},
		{"no final newline", bytes.TrimSuffix(minimal(b...), []byte("\n")), "newline"},
		{"blank line", minimal(append(b, "")...), "line 6"},
		{"no colon", minimal(append(b, "garbage")...), "line 6"},
		{"colon without space", minimal(append(b, "Foo:bar")...), "line 6"},
		{"duplicate StorePath", minimal(append(b, "StorePath: "+testPath)...), "line 6: duplicate StorePath (first on line 1)"},
		{"duplicate NarSize", minimal(append(b, "NarSize: 1")...), "duplicate NarSize"},
		{"duplicate URL", minimal(append(b, "URL: nar/y")...), "duplicate URL"},
		{"md5 NarHash", minimal(replaceLine(b, "NarHash", "NarHash: md5:00000000000000000000000000000000")...), "unsupported hash algorithm"},
		{"sha512 NarHash", minimal(replaceLine(b, "NarHash", "NarHash: sha512:"+strings.Repeat("0", 128))...), "unsupported hash algorithm"},
		{"NarHash without algo", minimal(replaceLine(b, "NarHash", "NarHash: "+testNix32)...), "algorithm"},
		{"NarHash bad nix32", minimal(replaceLine(b, "NarHash", "NarHash: sha256:"+strings.Repeat("e", 52))...), "nix32"},
		{"NarHash bad length", minimal(replaceLine(b, "NarHash", "NarHash: sha256:abc")...), "characters"},
		{"NarHash bad hex", minimal(replaceLine(b, "NarHash", "NarHash: sha256:"+strings.Repeat("g", 64))...), "base16"},
		{"NarSize not a number", minimal(replaceLine(b, "NarSize", "NarSize: 12x")...), "line 5: NarSize"},
		{"NarSize negative", minimal(replaceLine(b, "NarSize", "NarSize: -1")...), "NarSize"},
		{"NarSize zero", minimal(replaceLine(b, "NarSize", "NarSize: 0")...), "zero"},
		{"FileSize bad", minimal(append(b, "FileSize: many")...), "FileSize"},
		{"StorePath outside store", minimal(replaceLine(b, "StorePath", "StorePath: /gnu/store/"+testHash+"-hello")...), "not under /nix/store"},
		{"StorePath short hash", minimal(replaceLine(b, "StorePath", "StorePath: /nix/store/abc-hello")...), "StorePath"},
		{"StorePath bad hash char", minimal(replaceLine(b, "StorePath", "StorePath: /nix/store/"+strings.Repeat("e", 32)+"-hello")...), "nix32"},
		{"StorePath no name", minimal(replaceLine(b, "StorePath", "StorePath: /nix/store/"+testHash+"-")...), "StorePath"},
		{"StorePath bad name", minimal(replaceLine(b, "StorePath", "StorePath: /nix/store/"+testHash+"-he llo")...), "invalid character"},
		{"StorePath dot name", minimal(replaceLine(b, "StorePath", "StorePath: /nix/store/"+testHash+"-.hidden")...), "dot"},
		{"bad reference", minimal(append(b, "References: "+testHash+"-ok ../etc")...), "References"},
		{"bad deriver", minimal(append(b, "Deriver: nope")...), "Deriver"},
		{"too large", minimal(append(b, "X: "+strings.Repeat("a", MaxNarInfoSize))...), "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := ParseNarInfo(tt.raw)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseNarInfo: %v", err)
				}
				if n.NarHashString() != "sha256:"+testNix32 {
					t.Errorf("NarHashString() = %q", n.NarHashString())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseNarInfo error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestEffectiveCompression(t *testing.T) {
	tests := []struct {
		compression string // "-" means no Compression line
		want        string
	}{
		{"-", "bzip2"},
		{"xz", "xz"},
		{"zstd", "zstd"},
		{"none", "none"},
		{"bzip2", "bzip2"},
	}
	for _, tt := range tests {
		lines := replaceLine(baseLines(), "Compression", "")
		if tt.compression != "-" {
			lines = append(lines, "Compression: "+tt.compression)
		}
		n, err := ParseNarInfo(minimal(lines...))
		if err != nil {
			t.Fatal(err)
		}
		if got := n.EffectiveCompression(); got != tt.want {
			t.Errorf("Compression %q: EffectiveCompression() = %q, want %q", tt.compression, got, tt.want)
		}
		if tt.compression == "-" && n.Compression != "" {
			t.Errorf("Compression = %q for a missing line, want \"\"", n.Compression)
		}
	}
}

func TestFingerprint(t *testing.T) {
	sum := sha256.Sum256([]byte("nar"))
	tests := []struct {
		name string
		n    NarInfo
		want string
	}{
		{
			name: "refs sorted and made full paths",
			n: NarInfo{StorePath: testPath, NarHash: sum, NarSize: 42,
				References: []string{testHash + "-hello-2.12.2", "0bcv91i8fahqghn8dmyr791iaycbsjdd-glibc"}},
			want: "1;" + testPath + ";sha256:" + nixbase32.EncodeToString(sum[:]) + ";42;/nix/store/0bcv91i8fahqghn8dmyr791iaycbsjdd-glibc," + testPath,
		},
		{
			name: "no refs",
			n:    NarInfo{StorePath: testPath, NarHash: sum, NarSize: 7},
			want: "1;" + testPath + ";sha256:" + nixbase32.EncodeToString(sum[:]) + ";7;",
		},
		{
			// A zero NarInfo must not panic, unlike go-nix's Fingerprint.
			name: "zero value",
			want: "1;;sha256:" + strings.Repeat("0", 52) + ";0;",
		},
	}
	for _, tt := range tests {
		if got := tt.n.Fingerprint(); got != tt.want {
			t.Errorf("%s: Fingerprint() =\n %q, want\n %q", tt.name, got, tt.want)
		}
	}
}

func TestParseHashPart(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: testHash, want: testHash},
		{in: testHash + "-hello-2.12.2", want: testHash},
		{in: testPath, want: testHash},
		{in: testPath + "/bin/hello", want: testHash},
		{in: "", wantErr: true},
		{in: "abc", wantErr: true},
		{in: testHash + "x", wantErr: true},
		{in: testHash + "-", wantErr: true},
		{in: strings.Repeat("e", 32), wantErr: true},
		{in: strings.ToUpper(testHash), wantErr: true},
		{in: "/gnu/store/" + testHash + "-x", wantErr: true},
		{in: testHash + ".narinfo", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseHashPart(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseHashPart(%q) = %q, %v; want %q, wantErr %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestRewrite(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string
	}{
		{
			name: "all fields present, unknown keys kept in place",
			in: []string{"StorePath: " + testPath, "X-First: 1", "URL: nar/abc.nar.xz", "Compression: xz",
				"FileHash: sha256:1s5lj43a6dvnc4g31fhcfzrhyk0spz40v7vi1k308ghkd2zxh8fp", "FileSize: 57568",
				"NarHash: sha256:" + testNix32, "NarSize: 274568", "Weird-Key: a:b: c", "Sig: k:AAAA"},
			want: []string{"StorePath: " + testPath, "X-First: 1", "URL: nar/" + testNix32 + ".nar", "Compression: none",
				"FileHash: sha256:" + testNix32, "FileSize: 274568",
				"NarHash: sha256:" + testNix32, "NarSize: 274568", "Weird-Key: a:b: c", "Sig: k:AAAA"},
		},
		{
			name: "missing Compression, FileHash, FileSize are added after URL",
			in:   []string{"StorePath: " + testPath, "URL: nar/abc.nar.bz2", "NarHash: sha256:" + testNix32, "NarSize: 274568"},
			want: []string{"StorePath: " + testPath, "URL: nar/" + testNix32 + ".nar", "Compression: none",
				"FileHash: sha256:" + testNix32, "FileSize: 274568", "NarHash: sha256:" + testNix32, "NarSize: 274568"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := minimal(tt.in...)
			n, err := ParseNarInfo(raw)
			if err != nil {
				t.Fatal(err)
			}
			got := Rewrite(n, "nar/"+testNix32+".nar")
			if want := minimal(tt.want...); !bytes.Equal(got, want) {
				t.Errorf("Rewrite =\n%s\nwant\n%s", got, want)
			}
			if !bytes.Equal(n.Raw, raw) {
				t.Error("Rewrite modified n.Raw")
			}
			m, err := ParseNarInfo(got)
			if err != nil {
				t.Fatalf("rewritten narinfo does not parse: %v", err)
			}
			if m.Fingerprint() != n.Fingerprint() {
				t.Error("rewrite changed the fingerprint")
			}
		})
	}
}

// TestRewriteRealStillVerifies checks the property shoal depends on: after
// rewriting, cache.nixos.org's signature still verifies, every line other
// than the four rewritten ones is byte-identical, and unknown keys survive.
func TestRewriteRealStillVerifies(t *testing.T) {
	kr, err := ParseKeyring([]string{DefaultTrustedKey})
	if err != nil {
		t.Fatal(err)
	}
	rewritten := map[string]bool{"URL": true, "Compression": true, "FileHash": true, "FileSize": true}
	for hashPart, raw := range realNarInfos(t) {
		t.Run(hashPart, func(t *testing.T) {
			// Add an unknown key in the middle to check it is preserved.
			withUnknown := bytes.Replace(raw, []byte("NarSize:"), []byte("X-Unknown:  two  spaces:\tand tab\nNarSize:"), 1)
			n, err := ParseNarInfo(withUnknown)
			if err != nil {
				t.Fatal(err)
			}
			narURL := "nar/" + strings.TrimPrefix(n.NarHashString(), "sha256:") + ".nar"
			out := Rewrite(n, narURL)
			m, err := ParseNarInfo(out)
			if err != nil {
				t.Fatalf("rewritten narinfo does not parse: %v\n%s", err, out)
			}
			if _, err := kr.Verify(m); err != nil {
				t.Fatalf("rewritten narinfo does not verify: %v", err)
			}
			if m.URL != narURL || m.Compression != "none" || m.FileHash != n.NarHashString() || m.FileSize != n.NarSize {
				t.Errorf("rewritten fields: URL=%q Compression=%q FileHash=%q FileSize=%d", m.URL, m.Compression, m.FileHash, m.FileSize)
			}
			var kept, want []string
			for _, l := range strings.Split(string(out), "\n") {
				if k, _, _ := strings.Cut(l, ":"); !rewritten[k] {
					kept = append(kept, l)
				}
			}
			for _, l := range strings.Split(string(withUnknown), "\n") {
				if k, _, _ := strings.Cut(l, ":"); !rewritten[k] {
					want = append(want, l)
				}
			}
			if strings.Join(kept, "\n") != strings.Join(want, "\n") {
				t.Errorf("other lines changed:\n%s\nwant\n%s", strings.Join(kept, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

func FuzzParseNarInfo(f *testing.F) {
	for _, raw := range realNarInfos(f) {
		f.Add(raw)
	}
	f.Add(minimal(baseLines()...))
	f.Add([]byte("StorePath: x\n"))
	f.Add([]byte(":\n: \n"))
	kr, err := ParseKeyring([]string{DefaultTrustedKey})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		n, err := ParseNarInfo(raw)
		if err != nil {
			return
		}
		// Everything downstream of a successful parse must not panic
		// either, and a rewrite must parse again with the same fingerprint.
		_ = n.HashPart()
		_, _ = kr.Verify(n)
		out := Rewrite(n, "nar/x.nar")
		m, err := ParseNarInfo(out)
		if err != nil {
			if len(out) > MaxNarInfoSize {
				return
			}
			t.Fatalf("rewrite of a valid narinfo does not parse: %v\n%q", err, out)
		}
		if m.Fingerprint() != n.Fingerprint() {
			t.Fatalf("rewrite changed the fingerprint: %q vs %q", m.Fingerprint(), n.Fingerprint())
		}
	})
}
