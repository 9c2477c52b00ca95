package nixcache

import (
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

func TestRealNarInfosVerify(t *testing.T) {
	kr, err := ParseKeyring([]string{DefaultTrustedKey})
	if err != nil {
		t.Fatal(err)
	}
	for hashPart, raw := range realNarInfos(t) {
		n, err := ParseNarInfo(raw)
		if err != nil {
			t.Fatal(err)
		}
		name, err := kr.Verify(n)
		if err != nil || name != "cache.nixos.org-1" {
			t.Errorf("%s: Verify = %q, %v", hashPart, name, err)
		}
	}
}

func TestParseKeyring(t *testing.T) {
	tests := []struct {
		name    string
		keys    []string
		wantErr string
	}{
		{name: "real key", keys: []string{DefaultTrustedKey}},
		{name: "surrounding space", keys: []string{"  " + DefaultTrustedKey + "\n"}},
		{name: "empty list", keys: nil, wantErr: "no trusted public keys"},
		{name: "no name", keys: []string{":6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="}, wantErr: "#1"},
		{name: "bad base64", keys: []string{DefaultTrustedKey, "k:!!!"}, wantErr: `#2 "k:!!!"`},
		{name: "wrong length", keys: []string{"k:AAAA"}, wantErr: "k:AAAA"},
		{name: "no colon", keys: []string{"justaname"}, wantErr: "justaname"},
	}
	for _, tt := range tests {
		_, err := ParseKeyring(tt.keys)
		if tt.wantErr == "" && err != nil {
			t.Errorf("%s: %v", tt.name, err)
		}
		if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: error = %v, want one containing %q", tt.name, err, tt.wantErr)
		}
	}
}

type testKey struct {
	sk signature.SecretKey
	pk signature.PublicKey
}

func newTestKey(t *testing.T, name string) testKey {
	t.Helper()
	sk, pk, err := signature.GenerateKeypair(name, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{sk, pk}
}

func (k testKey) sign(t *testing.T, n *NarInfo) string {
	t.Helper()
	sig, err := k.sk.Sign(rand.Reader, n.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	return sig.String()
}

func TestVerifyAnyOf(t *testing.T) {
	trusted := newTestKey(t, "trusted-1")
	rotated := newTestKey(t, "trusted-1") // same name, new key
	other := newTestKey(t, "other-1")
	impostor := newTestKey(t, "trusted-1") // trusted name, untrusted key

	base, err := ParseNarInfo(minimal(append(baseLines(), "References: "+testHash+"-hello-2.12.2 0bcv91i8fahqghn8dmyr791iaycbsjdd-glibc")...))
	if err != nil {
		t.Fatal(err)
	}
	good := trusted.sign(t, base)
	goodRotated := rotated.sign(t, base)
	corrupt := good[:len(good)-6] + "AAAA=="
	tampered := *base
	tampered.NarSize++
	badBySize := trusted.sign(t, &tampered)
	tamperedRefs := *base
	tamperedRefs.References = base.References[:1]
	badByRefs := trusted.sign(t, &tamperedRefs)

	tests := []struct {
		name     string
		keys     []testKey
		sigs     []string
		wantName string
		wantErr  string
	}{
		{name: "single valid", keys: []testKey{trusted}, sigs: []string{good}, wantName: "trusted-1"},
		{name: "untrusted first, valid second", keys: []testKey{trusted}, sigs: []string{other.sign(t, base), good}, wantName: "trusted-1"},
		{name: "corrupt first, valid second", keys: []testKey{trusted}, sigs: []string{corrupt, good}, wantName: "trusted-1"},
		{name: "malformed first, valid second", keys: []testKey{trusted}, sigs: []string{"trusted-1:not base64!", good}, wantName: "trusted-1"},
		{name: "impostor first, valid second", keys: []testKey{trusted}, sigs: []string{impostor.sign(t, base), good}, wantName: "trusted-1"},
		{name: "two keys share a name, second signed", keys: []testKey{trusted, rotated}, sigs: []string{goodRotated}, wantName: "trusted-1"},
		{name: "two keys share a name, first signed", keys: []testKey{rotated, trusted}, sigs: []string{good}, wantName: "trusted-1"},
		{name: "either of two trusted names", keys: []testKey{other, trusted}, sigs: []string{good}, wantName: "trusted-1"},
		{name: "no Sig", keys: []testKey{trusted}, sigs: nil, wantErr: "no Sig lines"},
		{name: "only unknown key names", keys: []testKey{trusted}, sigs: []string{other.sign(t, base), "nobody:AAAA"}, wantErr: "no signature from a trusted key name (signed by other-1, nobody; trusted: trusted-1)"},
		{name: "corrupt only", keys: []testKey{trusted}, sigs: []string{corrupt}, wantErr: "signature by trusted-1 does not verify"},
		{name: "malformed only", keys: []testKey{trusted}, sigs: []string{"trusted-1:!!"}, wantErr: "signature by trusted-1 is malformed"},
		{name: "wrong key of trusted name", keys: []testKey{trusted}, sigs: []string{impostor.sign(t, base)}, wantErr: "does not verify"},
		{name: "signature over other NarSize", keys: []testKey{trusted}, sigs: []string{badBySize}, wantErr: "does not verify"},
		{name: "signature over other References", keys: []testKey{trusted}, sigs: []string{badByRefs}, wantErr: "does not verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var keys []string
			for _, k := range tt.keys {
				keys = append(keys, k.pk.String())
			}
			kr, err := ParseKeyring(keys)
			if err != nil {
				t.Fatal(err)
			}
			n := *base
			n.Sigs = tt.sigs
			name, err := kr.Verify(&n)
			if tt.wantErr == "" {
				if err != nil || name != tt.wantName {
					t.Fatalf("Verify = %q, %v; want %q", name, err, tt.wantName)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Verify = %q, %v; want error containing %q", name, err, tt.wantErr)
			}
			if !errors.Is(err, ErrUntrusted) {
				t.Errorf("error %v does not wrap ErrUntrusted", err)
			}
		})
	}
}

// TestVerifyTamperedReal edits signed fields of real narinfos: each edit
// must make verification fail.
func TestVerifyTamperedReal(t *testing.T) {
	kr, err := ParseKeyring([]string{DefaultTrustedKey})
	if err != nil {
		t.Fatal(err)
	}
	raw := realNarInfos(t)["2bcv91i8fahqghn8dmyr791iaycbsjdd"]
	tests := []struct {
		name, old, new string
	}{
		{"NarSize", "NarSize: 274568", "NarSize: 274569"},
		{"References dropped", "References: 2bcv91i8fahqghn8dmyr791iaycbsjdd-hello-2.12.2 xx7cm72qy2c0643cm1ipngd87aqwkcdp-glibc-2.40-66", "References: 2bcv91i8fahqghn8dmyr791iaycbsjdd-hello-2.12.2"},
		{"NarHash", "NarHash: sha256:0rmalafq2v3k7a83jcmh8hnh5kilbbzqf1rkzsdz0fv1nayscp04", "NarHash: sha256:1rmalafq2v3k7a83jcmh8hnh5kilbbzqf1rkzsdz0fv1nayscp04"},
		{"StorePath name", "-hello-2.12.2\n", "-hello-2.12.3\n"},
	}
	for _, tt := range tests {
		edited := strings.Replace(string(raw), tt.old, tt.new, 1)
		if edited == string(raw) {
			t.Fatalf("%s: edit did not apply", tt.name)
		}
		n, err := ParseNarInfo([]byte(edited))
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if _, err := kr.Verify(n); err == nil {
			t.Errorf("%s: tampered narinfo verifies", tt.name)
		}
	}
}
