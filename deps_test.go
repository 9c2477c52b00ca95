package shoal_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies keeps the heavy dependencies where they are needed: bbolt (the
// daemon's local cache) and libp2p (peers) stay out of the packages that publish,
// serve and maintain a chunk store, which run on servers and batch machines that have
// no use for either, and out of the format and protocol packages everything shares.
func TestDependencies(t *testing.T) {
	const (
		bbolt  = "go.etcd.io/bbolt"
		libp2p = "github.com/libp2p/"
	)
	forbidden := map[string][]string{
		"github.com/shoal-nix/shoal":                     {bbolt, libp2p},
		"github.com/shoal-nix/shoal/blob":                {bbolt, libp2p},
		"github.com/shoal-nix/shoal/chunk":               {bbolt, libp2p},
		"github.com/shoal-nix/shoal/manifest":            {bbolt, libp2p},
		"github.com/shoal-nix/shoal/nixname":             {bbolt, libp2p},
		"github.com/shoal-nix/shoal/nixcache":            {bbolt, libp2p},
		"github.com/shoal-nix/shoal/chunkstore":          {bbolt, libp2p},
		"github.com/shoal-nix/shoal/delta":               {bbolt, libp2p},
		"github.com/shoal-nix/shoal/publish":             {bbolt, libp2p},
		"github.com/shoal-nix/shoal/origin":              {bbolt, libp2p},
		"github.com/shoal-nix/shoal/chunkstore/maintain": {bbolt, libp2p},
		"github.com/shoal-nix/shoal/chunkstore/retire":   {bbolt, libp2p},
		"github.com/shoal-nix/shoal/chunkstore/migrate":  {bbolt, libp2p},
		"github.com/shoal-nix/shoal/analyze/dedup":       {bbolt, libp2p},
		"github.com/shoal-nix/shoal/analyze/accesslog":   {bbolt, libp2p},
		"github.com/shoal-nix/shoal/localcache":          {libp2p},
		"github.com/shoal-nix/shoal/nixstore":            {libp2p},
		"github.com/shoal-nix/shoal/fetch":               {libp2p},
	}
	out, err := exec.Command("go", "list", "-deps=false", "-f", `{{.ImportPath}} {{join .Deps " "}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		pkg, deps, _ := strings.Cut(line, " ")
		bad, ok := forbidden[pkg]
		if !ok {
			continue
		}
		checked++
		for dep := range strings.FieldsSeq(deps) {
			for _, b := range bad {
				if strings.HasPrefix(dep, b) {
					t.Errorf("%s depends on %s; it must not depend on %s", pkg, dep, b)
				}
			}
		}
	}
	if checked != len(forbidden) {
		t.Errorf("checked %d of the %d packages named here: a package was renamed or removed; update this test", checked, len(forbidden))
	}
}
