package chunkstore_test

import (
	"context"
	"slices"
	"testing"

	"github.com/shoal-nix/shoal/chunkstore"
)

func TestNameIndex(t *testing.T) {
	const h = "0123456789abcdfghijklmnpqrsvwxyz"
	for _, tc := range []struct{ path, key string }{
		{"/nix/store/" + h + "-go-1.25.0", "names/go/" + h + "-go-1.25.0"},
		{h + "-python3.12-numpy-2.1-dev", "names/python3.12-numpy/" + h + "-python3.12-numpy-2.1-dev"},
		{h + "-hello", "names/hello/" + h + "-hello"},
		{h + "-1.0", "names/1.0/" + h + "-1.0"},
		{"go-1.25.0", ""},     // no hash
		{h + "go-1.25.0", ""}, // no dash after the hash
	} {
		key, err := chunkstore.NameKey(tc.path)
		if key != tc.key || (err == nil) != (tc.key != "") {
			t.Errorf("NameKey(%q) = %q, %v; want %q", tc.path, key, err, tc.key)
		}
	}
	s, _ := chunkstore.Open(t.TempDir(), nil)
	ctx := context.Background()
	for _, p := range []string{h + "-go-1.25.0", h[1:] + "0-go-1.25.1", h + "-gopls-0.20"} {
		if err := s.PutName(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	if err := s.Names(ctx, "go", func(b string) error { got = append(got, b); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{h + "-go-1.25.0", h[1:] + "0-go-1.25.1"}; !slices.Equal(got, want) {
		t.Fatalf("names of go: %q, want %q", got, want)
	}
	if ok, err := s.HasName(ctx, h+"-gopls-0.20"); !ok || err != nil {
		t.Fatalf("HasName: %v, %v", ok, err)
	}
}
