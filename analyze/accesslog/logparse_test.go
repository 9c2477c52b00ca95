package accesslog

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

func unix(s string) int64 {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t.Unix()
}

type parseCase struct {
	name   string
	line   string
	want   Request
	errSub string // non-empty: the line is malformed, with this in the error (or skipped)
}

// skipped as errSub: the line is no request but not malformed either.
const skipped = "(skipped)"

const narURL = "/nar/1wh8plnr3zi4cpkcjy06sjpqva3qpgxpxaiakjwkfiinm4vwv703.nar.zst"

var combinedCases = []parseCase{
	{name: "nginx NAR download",
		line: `198.51.100.7 - - [02/Oct/2026:14:03:07 +0000] "GET ` + narURL + ` HTTP/1.1" 200 54741102 "-" "curl/8.7.1 Nix/2.24.9"`,
		want: Request{Unix: unix("2026-10-02T14:03:07Z"), Method: []byte("GET"), Path: []byte(narURL), Status: 200, Bytes: 54741102}},
	{name: "IPv6 client, HEAD, bytes -",
		line: `2001:db8::1 - - [02/Oct/2026:14:03:07 +0000] "HEAD /nix-cache-info HTTP/2.0" 200 - "-" "Nix/2.18.1"`,
		want: Request{Unix: unix("2026-10-02T14:03:07Z"), Method: []byte("HEAD"), Path: []byte("/nix-cache-info"), Status: 200, Bytes: 0}},
	{name: "time zone offset",
		line: `10.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326`,
		want: Request{Unix: unix("2000-10-10T20:55:36Z"), Method: []byte("GET"), Path: []byte("/apache_pb.gif"), Status: 200, Bytes: 2326}},
	{name: "quoted fields with spaces and escaped quotes",
		line: `203.0.113.9 - - [31/Dec/2025:23:59:59 +0100] "GET /abcd.narinfo HTTP/1.1" 404 0 "https://example.org/a b?q=\"x\"" "Mozilla/5.0 (X11; Linux x86_64) \x22quoted\x22"`,
		want: Request{Unix: unix("2025-12-31T22:59:59Z"), Method: []byte("GET"), Path: []byte("/abcd.narinfo"), Status: 404, Bytes: 0}},
	{name: "query string dropped, percent-decoded",
		line: `192.0.2.1 - - [01/Jan/2026:00:00:00 +0000] "GET /nar/ab%2Bc.nar.xz?download=1 HTTP/1.1" 206 1000 "-" "-"`,
		want: Request{Unix: unix("2026-01-01T00:00:00Z"), Method: []byte("GET"), Path: []byte("/nar/ab+c.nar.xz"), Status: 206, Bytes: 1000}},
	{name: "absolute-form target",
		line: `192.0.2.1 - - [01/Jan/2026:00:00:00 +0000] "GET http://cache.example.org/nar/x.nar HTTP/1.1" 200 5 "-" "-"`,
		want: Request{Unix: unix("2026-01-01T00:00:00Z"), Method: []byte("GET"), Path: []byte("/nar/x.nar"), Status: 200, Bytes: 5}},
	{name: "TLS handshake on the plain port",
		line: `192.0.2.1 - - [01/Jan/2026:00:00:00 +0000] "\x16\x03\x01\x00\xF4\x01" 400 157 "-" "-"`,
		want: Request{Unix: unix("2026-01-01T00:00:00Z"), Status: 400, Bytes: 157}},
	{name: "empty request",
		line: `192.0.2.1 - - [01/Jan/2026:00:00:00 +0000] "-" 408 0 "-" "-"`,
		want: Request{Unix: unix("2026-01-01T00:00:00Z"), Status: 408}},
	{name: "CRLF line ending",
		line: "192.0.2.1 - - [01/Jan/2026:00:00:00 +0000] \"GET / HTTP/1.1\" 200 1\r",
		want: Request{Unix: unix("2026-01-01T00:00:00Z"), Method: []byte("GET"), Path: []byte("/"), Status: 200, Bytes: 1}},
	{name: "cut short", line: `198.51.100.7 - - [02/Oct/2026:14:03:07 +0000] "GET /nar/0`, errSub: "quoted request"},
	{name: "bad month", line: `198.51.100.7 - - [02/Okt/2026:14:03:07 +0000] "GET / HTTP/1.1" 200 1`, errSub: "time"},
	{name: "bad hour", line: `198.51.100.7 - - [02/Oct/2026:25:03:07 +0000] "GET / HTTP/1.1" 200 1`, errSub: "time"},
	{name: "no time zone", line: `198.51.100.7 - - [02/Oct/2026:14:03:07] "GET / HTTP/1.1" 200 1`, errSub: "time"},
	{name: "bad status", line: `198.51.100.7 - - [02/Oct/2026:14:03:07 +0000] "GET / HTTP/1.1" 2x0 1`, errSub: "status"},
	{name: "missing status", line: `198.51.100.7 - - [02/Oct/2026:14:03:07 +0000] "GET / HTTP/1.1"`, errSub: "status"},
	{name: "bad bytes", line: `198.51.100.7 - - [02/Oct/2026:14:03:07 +0000] "GET / HTTP/1.1" 200 12k "-" "-"`, errSub: "bytes"},
	{name: "unclosed bracket", line: `198.51.100.7 - - [02/Oct/2026:14:03:07 +0000 "GET / HTTP/1.1" 200 1`, errSub: "time"},
}

const s3Owner = "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be"

var s3Cases = []parseCase{
	{name: "GET object, virtual-hosted",
		line: s3Owner + ` nix-cache [06/Feb/2019:00:00:38 +0000] 192.0.2.3 - 3E57427F3EXAMPLE REST.GET.OBJECT nar/0mkakw2f.nar.xz "GET /nar/0mkakw2f.nar.xz HTTP/1.1" 200 - 2662992 3462992 70 10 "-" "curl/7.88 Nix/2.18.1" - s9lzHYrFp76ZVxRcpX9+5cjAnEH2ROuNkd2BHfIa6UkFVdtjf5mKR3/eTPFvsiP/XV/VLi31234= SigV4 ECDHE-RSA-AES128-GCM-SHA256 AuthHeader nix-cache.s3.us-west-1.amazonaws.com TLSV1.2 - -`,
		want: Request{Unix: unix("2019-02-06T00:00:38Z"), Method: []byte("GET"), Path: []byte("/nar/0mkakw2f.nar.xz"), Status: 200, Bytes: 2662992}},
	{name: "HEAD, path-style, IPv6, bytes -, requester ARN",
		line: s3Owner + ` nix-cache [06/Feb/2019:00:00:38 -0100] 2001:db8::7 arn:aws:iam::123456789012:user/ci 891CE47D2EXAMPLE REST.HEAD.OBJECT nar/x.nar.zst "HEAD /nix-cache/nar/x.nar.zst HTTP/1.1" 200 - - 54741102 12 - "-" "Nix/2.24.9 (x86_64-linux)" - hostid= SigV4 - AuthHeader s3.amazonaws.com TLSv1.3 - -`,
		want: Request{Unix: unix("2019-02-06T01:00:38Z"), Method: []byte("HEAD"), Path: []byte("/nar/x.nar.zst"), Status: 200, Bytes: 0}},
	{name: "miss",
		line: s3Owner + ` nix-cache [06/Feb/2019:00:00:38 +0000] 192.0.2.3 - 3E57427F3EXAMPLE REST.GET.OBJECT abcd.narinfo "GET /abcd.narinfo HTTP/1.1" 404 NoSuchKey 243 - 9 - "-" "Nix" -`,
		want: Request{Unix: unix("2019-02-06T00:00:38Z"), Method: []byte("GET"), Path: []byte("/abcd.narinfo"), Status: 404, Bytes: 243}},
	{name: "encoded key",
		line: s3Owner + ` nix-cache [06/Feb/2019:00:00:38 +0000] 192.0.2.3 - 3E57427F3EXAMPLE REST.GET.OBJECT nar/a%2Bb.nar "GET /nar/a%2Bb.nar HTTP/1.1" 206 - 100 200 1 1 "-" "-" -`,
		want: Request{Unix: unix("2019-02-06T00:00:38Z"), Method: []byte("GET"), Path: []byte("/nar/a+b.nar"), Status: 206, Bytes: 100}},
	{name: "bucket operation without key",
		line: s3Owner + ` nix-cache [06/Feb/2019:00:00:38 +0000] 192.0.2.3 - 3E57427F3EXAMPLE REST.GET.BUCKET - "GET /?list-type=2&prefix=nar%2F HTTP/1.1" 200 - 5000 - 20 19 "-" "aws-cli/2" -`,
		want: Request{Unix: unix("2019-02-06T00:00:38Z"), Method: []byte("GET"), Path: []byte("/"), Status: 200, Bytes: 5000}},
	{name: "lifecycle transition",
		line:   s3Owner + ` nix-cache [06/Feb/2019:00:00:38 +0000] - AmazonS3 3E57427F3EXAMPLE S3.TRANSITION.OBJECT nar/x.nar "-" - - - 5 - - "-" "-" -`,
		errSub: skipped},
	{name: "unquoted request", line: s3Owner + ` nix-cache [06/Feb/2019:00:00:38 +0000] 192.0.2.3 - 3E57 REST.GET.OBJECT k GET /k HTTP/1.1 200 - 1 1 1 1`, errSub: "request URI"},
	{name: "bad bytes", line: s3Owner + ` nix-cache [06/Feb/2019:00:00:38 +0000] 192.0.2.3 - 3E57 REST.GET.OBJECT k "GET /k HTTP/1.1" 200 - x 1 1 1`, errSub: "bytes"},
}

const cfLine = "2019-12-04\t21:02:31\tLAX1\t392\t192.0.2.100\tGET\td111111abcdef8.cloudfront.net\t/nar/abc.nar.xz\t200\t-\tNix/2.18.1%20curl/8.0\t-\t-\tHit\tSOX4xwn4XV6Q4rgb7XiVGOHms_BGlTAC4KyHmureZmBNrjGdRLiNIQ==\td111111abcdef8.cloudfront.net\thttps\t23\t0.001\t-\tTLSv1.2\tECDHE-RSA-AES128-GCM-SHA256\tHit\tHTTP/2.0\t-\t-\t11040\t0.001\tHit\tapplication/x-xz\t78\t-\t-"

var cloudFrontCases = []parseCase{
	{name: "standard log line",
		line: cfLine,
		want: Request{Unix: unix("2019-12-04T21:02:31Z"), Method: []byte("GET"), Path: []byte("/nar/abc.nar.xz"), Status: 200, Bytes: 392}},
	{name: "IPv6, HEAD, encoded stem",
		line: "2019-12-04\t21:02:31\tLAX1\t0\t2001:db8::100\tHEAD\td1.cloudfront.net\t/nar/a%2Bb.nar\t206\t-\t-\t-\t-\tMiss\tx\td1\thttps\t23\t0.1",
		want: Request{Unix: unix("2019-12-04T21:02:31Z"), Method: []byte("HEAD"), Path: []byte("/nar/a+b.nar"), Status: 206, Bytes: 0}},
	{name: "too few fields", line: "2019-12-04\t21:02:31\tLAX1\t392\t192.0.2.100\tGET", errSub: "fields"},
	{name: "bad time", line: "2019-12-04\t21:2:31\tLAX1\t392\t192.0.2.100\tGET\th\t/\t200", errSub: "time"},
	{name: "status 000 (client gone)", line: "2019-12-04\t21:02:31\tLAX1\t392\t192.0.2.100\tGET\th\t/\t000", errSub: skipped},
	{name: "bad status", line: "2019-12-04\t21:02:31\tLAX1\t392\t192.0.2.100\tGET\th\t/\t20", errSub: "status"},
}

func checkParse(t *testing.T, p *LineParser, tc parseCase) {
	t.Helper()
	got, err := p.Parse([]byte(tc.line))
	if tc.errSub == skipped {
		if !IsSkip(err) {
			t.Errorf("%s: got %+v, %v; want the line skipped", tc.name, got, err)
		}
		return
	}
	if tc.errSub != "" {
		if err == nil || IsSkip(err) || !strings.Contains(err.Error(), tc.errSub) {
			t.Errorf("%s: got %+v, %v; want an error about %q", tc.name, got, err, tc.errSub)
		}
		return
	}
	if err != nil {
		t.Errorf("%s: %v", tc.name, err)
		return
	}
	if got.Unix != tc.want.Unix || !bytes.Equal(got.Method, tc.want.Method) || !bytes.Equal(got.Path, tc.want.Path) ||
		got.Status != tc.want.Status || got.Bytes != tc.want.Bytes {
		t.Errorf("%s:\n got  %d %q %q %d %d\n want %d %q %q %d %d", tc.name, got.Unix, got.Method, got.Path, got.Status, got.Bytes,
			tc.want.Unix, tc.want.Method, tc.want.Path, tc.want.Status, tc.want.Bytes)
	}
}

// Each format's lines parse the same whether the format is given or
// detected.
func TestParseLogLine(t *testing.T) {
	for _, set := range []struct {
		format LogFormat
		cases  []parseCase
	}{{FormatCombined, combinedCases}, {FormatS3, s3Cases}, {FormatCloudFront, cloudFrontCases}} {
		for _, format := range []LogFormat{set.format, FormatAuto} {
			t.Run(string(set.format)+"/"+string(format), func(t *testing.T) {
				for _, tc := range set.cases {
					checkParse(t, NewLineParser(format), tc)
				}
			})
		}
	}
}

func TestParseSkipsHeadersAndBlankLines(t *testing.T) {
	p := NewLineParser(FormatAuto)
	for _, line := range []string{"", "   ", "\r", "#Version: 1.0", "#Fields: date time x-edge-location sc-bytes c-ip cs-method cs(Host) cs-uri-stem sc-status"} {
		if _, err := p.Parse([]byte(line)); !IsSkip(err) {
			t.Errorf("%q: %v, want it skipped", line, err)
		}
	}
	for _, line := range []string{"hello", "a b c d e f", "1.2.3.4 [x]"} {
		if _, err := p.Parse([]byte(line)); err == nil || IsSkip(err) {
			t.Errorf("%q: %v, want malformed", line, err)
		}
	}
}

// A #Fields header reorders the columns of the lines after it.
func TestCloudFrontFieldsHeader(t *testing.T) {
	p := NewLineParser(FormatCloudFront)
	if _, err := p.Parse([]byte("#Fields: cs-uri-stem sc-status date time cs-method sc-bytes")); !IsSkip(err) {
		t.Fatal(err)
	}
	checkParse(t, p, parseCase{name: "reordered", line: "/nar/x.nar\t200\t2020-02-29\t12:00:00\tGET\t77",
		want: Request{Unix: unix("2020-02-29T12:00:00Z"), Method: []byte("GET"), Path: []byte("/nar/x.nar"), Status: 200, Bytes: 77}})
	if _, err := p.Parse([]byte("#Fields: date time")); err == nil || IsSkip(err) {
		t.Errorf("a #Fields header without the needed columns was accepted")
	}
}

func TestDaysFromCivil(t *testing.T) {
	for _, d := range []string{"1970-01-01", "2000-02-29", "2026-10-02", "1969-12-31", "2100-03-01", "0001-01-01"} {
		tm, _ := time.Parse(time.DateOnly, d)
		if got := daysFromCivil(int64(tm.Year()), int64(tm.Month()), int64(tm.Day())) * 86400; got != tm.Unix() {
			t.Errorf("%s: %d, want %d", d, got, tm.Unix())
		}
	}
}

func TestParseAge(t *testing.T) {
	for in, want := range map[string]time.Duration{"30d": 30 * 24 * time.Hour, "2w": 14 * 24 * time.Hour, "36h": 36 * time.Hour, "0d": 0} {
		if got, err := ParseAge(in); err != nil || got != want {
			t.Errorf("ParseAge(%q) = %v, %v; want %v", in, got, err, want)
		}
		if got := FormatAge(want); in != "36h" && in != "2w" && got != in {
			t.Errorf("FormatAge(%v) = %q, want %q", want, got, in)
		}
	}
	for _, in := range []string{"", "30", "d", "-1d", "1.5d", "-3h", "thirty days"} {
		if _, err := ParseAge(in); err == nil {
			t.Errorf("ParseAge(%q) accepted", in)
		}
	}
}

// FuzzParseLogLine checks that no line crashes a parser or yields a request
// outside what the analysis assumes, and that a combined line rebuilt from a
// parsed request parses back to it.
func FuzzParseLogLine(f *testing.F) {
	for _, set := range [][]parseCase{combinedCases, s3Cases, cloudFrontCases} {
		for _, tc := range set {
			f.Add(tc.line)
		}
	}
	f.Fuzz(func(t *testing.T, line string) {
		for _, format := range LogFormats {
			r, err := NewLineParser(format).Parse([]byte(line))
			if err != nil {
				continue
			}
			if r.Status < 100 || r.Status > 599 || r.Bytes < 0 {
				t.Fatalf("%s %q: status %d, bytes %d", format, line, r.Status, r.Bytes)
			}
			if format != FormatCombined || len(r.Method) == 0 || bytes.ContainsAny(r.Method, " \"\\") || bytes.ContainsAny(r.Path, " \"\\?%\t\r\n") || !bytes.HasPrefix(r.Path, []byte("/")) || r.Unix < 0 {
				continue
			}
			// Rebuild the line and parse it again.
			rebuilt := fmt.Sprintf(`h - - [%s] "%s %s HTTP/1.1" %d %d "-" "-"`, time.Unix(r.Unix, 0).UTC().Format("02/Jan/2006:15:04:05 -0700"), r.Method, r.Path, r.Status, r.Bytes)
			r2, err := NewLineParser(FormatAuto).Parse([]byte(rebuilt))
			if err != nil {
				t.Fatalf("%q parsed as %+v, but its rebuilt form %q does not parse: %v", line, r, rebuilt, err)
			}
			if r2.Unix != r.Unix || !bytes.Equal(r2.Method, r.Method) || !bytes.Equal(r2.Path, r.Path) || r2.Status != r.Status || r2.Bytes != r.Bytes {
				t.Fatalf("%q: %+v, rebuilt %q: %+v", line, r, rebuilt, r2)
			}
		}
	})
}

// benchLog is n combined lines of a cache's traffic: narinfo hits and
// misses and NAR downloads.
func benchLog(n int) []byte {
	var b bytes.Buffer
	t := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		ts := t.Add(time.Duration(i) * time.Second).Format("02/Jan/2006:15:04:05 -0700")
		switch i % 3 {
		case 0:
			fmt.Fprintf(&b, "198.51.100.%d - - [%s] \"GET /%032d.narinfo HTTP/1.1\" 200 621 \"-\" \"curl/8.7.1 Nix/2.24.9\"\n", i%250, ts, i)
		case 1:
			fmt.Fprintf(&b, "2001:db8::%x - - [%s] \"GET /nar/%052d.nar.xz HTTP/1.1\" 200 54741102 \"-\" \"curl/8.7.1 Nix/2.24.9\"\n", i%4096, ts, i%500)
		case 2:
			fmt.Fprintf(&b, "198.51.100.%d - - [%s] \"GET /%032d.narinfo HTTP/1.1\" 404 0 \"-\" \"curl/8.7.1 Nix/2.24.9\"\n", i%250, ts, i)
		}
	}
	return b.Bytes()
}

// BenchmarkParseLogLine measures parser throughput against splitting the
// same bytes into lines alone, the floor no parser can beat. parse/split is
// how many times longer parsing takes than splitting.
func BenchmarkParseLogLine(b *testing.B) {
	n := 200_000
	if testing.Short() {
		n = 2_000
	}
	log := benchLog(n)
	b.SetBytes(int64(len(log)))
	var split, parse time.Duration
	var sink int
	for range b.N {
		start := time.Now()
		sc := bufio.NewScanner(bytes.NewReader(log))
		for sc.Scan() {
			sink += len(sc.Bytes())
		}
		split += time.Since(start)

		start = time.Now()
		sc = bufio.NewScanner(bytes.NewReader(log))
		p := NewLineParser(FormatAuto)
		for sc.Scan() {
			r, err := p.Parse(sc.Bytes())
			if err != nil {
				b.Fatal(err)
			}
			sink += r.Status
		}
		parse += time.Since(start)
	}
	if sink == 0 {
		b.Fatal("nothing parsed")
	}
	lines := float64(n) * float64(b.N)
	b.ReportMetric(lines/parse.Seconds(), "parse-lines/s")
	b.ReportMetric(lines/split.Seconds(), "split-lines/s")
	b.ReportMetric(parse.Seconds()/split.Seconds(), "parse/split")
}
