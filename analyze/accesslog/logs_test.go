package accesslog

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/s3test"
)

func TestReadKeepList(t *testing.T) {
	const hp = "nrmgqvzm195ynrwfx6b0bpv3g5vsaf9d"
	k, err := ReadKeepList(strings.NewReader(`# comment
/nix/store/`+hp+`-go-1.25.0

mjf9dkc79kb7whbvlih5x4manql0y0qk.narinfo
  lpaa6r1qw9dp6i9ikzkya2cbrr8hhfk7-go-1.25.2
w1by9f2x45lliz424xd028mjvch9jfn1
nar/1rr0skp07zik7dc0yjl738jfryg72lhwpn934zz25m1gdwg9n1a3.nar.zst
https://cache.example.org/nar/0mkakw2fd5bll1c1srr60vgwq9pqzqd79mkrpdsvm14xrj2hw8h9.nar.xz
`), "keep.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key, storePath string
		want           bool
	}{
		{"nar/a.nar", "/nix/store/" + hp + "-go-1.25.0", true},
		{"nar/a.nar", "/nix/store/mjf9dkc79kb7whbvlih5x4manql0y0qk-go-1.25.1", true},
		{"nar/a.nar", "/nix/store/lpaa6r1qw9dp6i9ikzkya2cbrr8hhfk7-go-1.25.2", true},
		{"nar/a.nar", "/nix/store/w1by9f2x45lliz424xd028mjvch9jfn1-go-1.25.3", true},
		{"nar/1rr0skp07zik7dc0yjl738jfryg72lhwpn934zz25m1gdwg9n1a3.nar.zst", "", true},
		{"nar/0mkakw2fd5bll1c1srr60vgwq9pqzqd79mkrpdsvm14xrj2hw8h9.nar.xz", "", true},
		{"nar/a.nar", "/nix/store/p942bb0f0vdrdk97r5dkkiwdzsqwlkwr-go-1.25.5", false},
		{"nar/a.nar", "", false},
	} {
		if got := k.Has(tc.key, tc.storePath); got != tc.want {
			t.Errorf("Has(%q, %q) = %v, want %v", tc.key, tc.storePath, got, tc.want)
		}
	}
	if !k.NeedsStorePaths() || k.Len() != 6 {
		t.Errorf("NeedsStorePaths %v, Len %d; want true, 6", k.NeedsStorePaths(), k.Len())
	}
	for _, bad := range []string{"go-1.25.0\n", "/nix/store/short-x\n", "w1by9f2x45lliz424xd028mjvch9jfn1.nar\n"} {
		if _, err := ReadKeepList(strings.NewReader(bad), "bad.txt"); err == nil || !strings.Contains(err.Error(), "bad.txt line 1") {
			t.Errorf("%q: %v, want an error naming the line", bad, err)
		}
	}
}

// Rotated logs come plain, gzipped (often several members concatenated) or
// zstd-compressed; all read the same, whatever their names.
func TestOpenLogDecompresses(t *testing.T) {
	const text = "line one\nline two\n"
	var gz bytes.Buffer
	for _, part := range []string{"line one\n", "line two\n"} {
		zw := gzip.NewWriter(&gz)
		zw.Write([]byte(part))
		zw.Close()
	}
	enc, _ := zstd.NewWriter(nil)
	zst := enc.EncodeAll([]byte(text), nil)
	enc.Close()
	dir := t.TempDir()
	for name, data := range map[string][]byte{"plain.gz": []byte(text), "access.log.1": gz.Bytes(), "access.log.2": zst} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		rc, err := OpenLog(path)
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		_, err = got.ReadFrom(rc)
		rc.Close()
		if err != nil || got.String() != text {
			t.Errorf("%s: %q, %v", name, got.String(), err)
		}
	}
	// A truncated gzip file is an error naming the file, not a silent end.
	path := filepath.Join(dir, "cut.gz")
	os.WriteFile(path, gz.Bytes()[:len(gz.Bytes())-10], 0o644)
	rc, err := OpenLog(path)
	if err == nil {
		_, err = new(bytes.Buffer).ReadFrom(rc)
		rc.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "cut.gz") {
		t.Errorf("truncated gzip: %v", err)
	}
}

// An overlong line is one malformed line; the lines around it still count.
func TestAnalyzeLogsLongLine(t *testing.T) {
	line := `192.0.2.1 - - [01/Oct/2026:00:00:00 +0000] "GET /nar/a.nar HTTP/1.1" 200 100 "-" "-"` + "\n"
	log := line + strings.Repeat("x", 3*maxLine) + "\n" + line + "no newline at the end"
	path := filepath.Join(t.TempDir(), "access.log")
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err := AnalyzeLogs(context.Background(), []string{path}, LogOptions{OlderThan: []time.Duration{0}, Examples: 5})
	if err != nil {
		t.Fatal(err)
	}
	if rep.NAR.Requests != 2 || rep.Malformed != 2 || len(rep.Examples) != 2 || rep.Examples[0].Line != 2 || rep.Examples[1].Line != 4 {
		t.Errorf("NAR requests %d, malformed %d, examples %+v", rep.NAR.Requests, rep.Malformed, rep.Examples)
	}
	if s := rep.Scenarios[0]; s.Retired.Requests != 2 || s.Retired.Bytes != 200 || s.PeakRequests != 2 {
		t.Errorf("older than 0: %+v", s)
	}
}

func TestAnalyzeLogsCancelled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	// More lines than scanLog reads between looks at the context.
	if err := os.WriteFile(path, benchLog(70_000), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := AnalyzeLogs(ctx, []string{path}, LogOptions{OlderThan: []time.Duration{time.Hour}}); err == nil {
		t.Error("a cancelled analysis finished")
	}
}

// The resolver names NARs by the narinfos of the cache and dates them by
// the NAR files, on a directory and on a real S3 server alike.
func TestCacheResolver(t *testing.T) {
	backends := map[string]func(t *testing.T) blob.Backend{
		"file": func(t *testing.T) blob.Backend {
			b, err := blob.Open(t.TempDir(), nil)
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
		"s3": func(t *testing.T) blob.Backend {
			srv := s3test.Start(t)
			b, err := blob.Open(srv.URL(srv.Bucket(t, "main-cache"), "cache"), nil)
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
	}
	for name, open := range backends {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			b := open(t)
			src := cachetest.New(t, "resolver-1")
			a := src.Add(t, cachetest.HashPart("a"), "a-1", []byte("nar a"), "none")
			c := src.Add(t, cachetest.HashPart("c"), "c-1", []byte("nar c"), "zstd")
			before := time.Now().Add(-time.Second)
			err := filepath.WalkDir(src.Dir, func(path string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				data, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				rel, _ := filepath.Rel(src.Dir, path)
				return b.Put(ctx, filepath.ToSlash(rel), data)
			})
			if err != nil {
				t.Fatal(err)
			}
			// A broken narinfo is skipped, not fatal; an orphan NAR has an age but no name.
			if err := b.Put(ctx, cachetest.HashPart("broken")+".narinfo", []byte("StorePath: nonsense\n")); err != nil {
				t.Fatal(err)
			}
			if err := b.Put(ctx, "nar/orphan.nar", []byte("x")); err != nil {
				t.Fatal(err)
			}
			after := time.Now().Add(time.Second)
			facts, err := CacheResolver{Backend: b, Jobs: 4}.Resolve(ctx, []string{a.URL, c.URL, "nar/orphan.nar", "nar/gone.nar", "nar/../escape"})
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{a.URL: a.StorePath, c.URL: c.StorePath, "nar/orphan.nar": ""}
			if len(facts) != len(want) {
				t.Errorf("facts for %d NARs, want %d: %v", len(facts), len(want), facts)
			}
			for k, sp := range want {
				f, ok := facts[k]
				if !ok || f.StorePath != sp || f.Modified.Before(before) || f.Modified.After(after) {
					t.Errorf("%s: %+v (found %v), want store path %q modified between %v and %v", k, f, ok, sp, before, after)
				}
			}
		})
	}
}

// growingResolver appends a line to the log while the analysis sits between
// its passes, as a web server writing its live log would.
type growingResolver struct {
	log, line string
}

func (g growingResolver) Resolve(ctx context.Context, keys []string) (map[string]NarFacts, error) {
	f, err := os.OpenFile(g.log, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.WriteString(g.line); err != nil {
		return nil, err
	}
	out := map[string]NarFacts{}
	for _, k := range keys {
		out[k] = NarFacts{StorePath: "/nix/store/" + cachetest.HashPart(k) + "-x", Modified: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	}
	return out, nil
}

func TestAnalyzeLogsLiveLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	if err := os.WriteFile(path, []byte(`192.0.2.1 - - [01/Oct/2026:00:00:00 +0000] "GET /nar/a.nar HTTP/1.1" 200 100 "-" "-"`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res := growingResolver{log: path, line: `192.0.2.1 - - [01/Oct/2026:00:00:01 +0000] "GET /nar/new.nar HTTP/1.1" 200 7 "-" "-"` + "\n"}
	rep, err := AnalyzeLogs(context.Background(), []string{path}, LogOptions{OlderThan: []time.Duration{0}, Resolver: res})
	if err != nil {
		t.Fatal(err)
	}
	if rep.NAR.Requests != 2 || rep.NotInCache.Requests != 1 || rep.NotInCache.Bytes != 7 || rep.Scenarios[0].Retired.Requests != 1 {
		t.Errorf("NAR %+v, not in cache %+v, retired %+v", rep.NAR, rep.NotInCache, rep.Scenarios[0].Retired)
	}
}

// A run over files that are not access logs (or in another --format) says
// so before any number, not just in a count at the end.
func TestTableWarnsWhenMostLinesAreMalformed(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{
		"access.log": `192.0.2.1 - - [01/Oct/2026:00:00:00 +0000] "GET /nar/a.nar HTTP/1.1" 200 100 "-" "-"` + "\nnot a log line\n",
		"other.txt":  "a\nb\n",
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		rep, err := AnalyzeLogs(context.Background(), []string{path}, LogOptions{OlderThan: []time.Duration{time.Hour}})
		if err != nil {
			t.Fatal(err)
		}
		var table bytes.Buffer
		if err := rep.WriteTable(&table); err != nil {
			t.Fatal(err)
		}
		if warned, want := strings.Contains(table.String(), "MOST LINES DID NOT PARSE"), name == "other.txt"; warned != want {
			t.Errorf("%s: warned %v, want %v:\n%s", name, warned, want, table.String())
		}
	}
}
