package main

import (
	"os"
	"strings"
	"testing"
)

// The README's first lines tell a new user that savings need a published chunk
// store and who runs which command; its flake example keeps one nixpkgs.
func TestReadmeForNewUsers(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	intro, _, _ := strings.Cut(readme, "```")
	for _, want := range []string{"shoal publish", "chunk store", "operator", "each machine", "shoal daemon", "shoal serve"} {
		if !strings.Contains(intro, want) {
			t.Errorf("the README's opening, before its first command, does not mention %q", want)
		}
	}
	if !strings.Contains(readme, `inputs.shoal.inputs.nixpkgs.follows = "nixpkgs";`) {
		t.Error("the README's flake example does not make shoal follow the system's nixpkgs")
	}
}
