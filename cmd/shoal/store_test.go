package main

import (
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunkstore/maintain"
)

// Each line of store gc's summary must carry its own kind's counts: a store with 80
// kept deltas once read "deltas: 0 deleted (80 bytes), 0 kept".
func TestStoreGCReportLines(t *testing.T) {
	rep := maintain.Report{
		NarInfos:  maintain.Counts{Deleted: 1, DeletedBytes: 11, Kept: 2},
		Manifests: maintain.Counts{Deleted: 3, DeletedBytes: 33, Kept: 4},
		Chunks:    maintain.Counts{Deleted: 5, DeletedBytes: 55, Kept: 6},
		Deltas:    maintain.Counts{Deleted: 7, DeletedBytes: 77, Kept: 80},
		NarURLs:   maintain.Counts{Deleted: 9},
		Young:     10,
		Elapsed:   1500 * time.Millisecond,
		Packs: maintain.PackReport{Packs: 7, Bytes: 700, LiveBytes: 400, DeadBytes: 300, Deleted: maintain.Counts{Deleted: 2, DeletedBytes: 200, Kept: 3},
			Repacked: 2, RepackedBytes: 150, NewPacks: 1, NewPackBytes: 60, CopiedObjects: 12, ManifestsRewritten: 4, ReadRequests: 5, ReadBytes: 61, WriteRequests: 8,
			Duplicates: 6, DuplicateBytes: 66, DuplicatesRemoved: 5},
	}
	var out strings.Builder
	printGCReport(&out, rep, true)
	for _, want := range []string{
		"would free 27 objects, 376 bytes in 1.5s\n",
		"  packs:     7 (700 bytes: 400 live, 300 dead)\n",
		"    deleted: 2 (200 bytes), kept 3\n",
		"    repacked: 2 (150 bytes; deleted one --grace from now), waiting for --grace: 0\n",
		"    repack cost: read 61 bytes in 5 requests, wrote 1 packs (60 bytes, 12 objects), 4 manifests rewritten, 8 writes\n",
		"    duplicates: 6 found (66 bytes), 5 removed\n",
		"    bytes reclaimed: 140 now, 150 more when the repacked packs go\n",
		"  narinfos:  1 deleted (11 bytes), 2 kept\n",
		"  manifests: 3 deleted (33 bytes), 4 kept\n",
		"  chunks:    5 deleted (55 bytes), 6 kept\n",
		"  deltas:    7 deleted (77 bytes), 80 kept\n",
		"  NAR URL index entries: 9 deleted\n",
		"  spared as younger than --grace: 10\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}
