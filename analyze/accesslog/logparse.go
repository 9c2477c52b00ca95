package accesslog

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
)

// LogFormat names an access log format.
type LogFormat string

const (
	// FormatAuto recognizes each line's format by its shape, so files of
	// different origins can be analyzed together.
	FormatAuto LogFormat = "auto"
	// FormatCombined is the NCSA combined (and common) format that nginx and
	// Apache write by default.
	FormatCombined LogFormat = "combined"
	// FormatS3 is the Amazon S3 server access log format.
	FormatS3 LogFormat = "s3"
	// FormatCloudFront is CloudFront's standard (tab-separated, W3C) log.
	FormatCloudFront LogFormat = "cloudfront"
)

// LogFormats lists the accepted formats, for help texts and errors.
var LogFormats = []LogFormat{FormatAuto, FormatCombined, FormatS3, FormatCloudFront}

// ParseLogFormat accepts one of LogFormats.
func ParseLogFormat(s string) (LogFormat, error) {
	for _, f := range LogFormats {
		if string(f) == s {
			return f, nil
		}
	}
	return "", fmt.Errorf("unknown log format %q (want one of %v)", s, LogFormats)
}

// Request is one access log line, reduced to what the analysis needs.
// Method and Path alias the parsed line (or the parser's scratch buffer) and
// are only valid until the next call to Parse.
type Request struct {
	Unix   int64  // request time, seconds since the Unix epoch
	Method []byte // GET, HEAD, ...; empty when the request line was unreadable
	Path   []byte // URL path without query, percent-decoded
	Status int
	Bytes  int64 // bytes sent to the client; 0 when logged as "-"
}

// errSkip marks lines that carry no request and are not malformed: blank
// lines and CloudFront's #Version/#Fields headers.
var errSkip = errors.New("no request on this line")

// LineParser parses access log lines one at a time without allocating on the
// common path: analyses run over many gigabytes of logs. It is stateful only
// for CloudFront, whose #Fields header says the column order of the lines
// after it; use one parser per file.
type LineParser struct {
	format  LogFormat
	cf      cfColumns
	scratch []byte
}

// NewLineParser returns a parser for format (FormatAuto, or "", detects
// each line's).
func NewLineParser(format LogFormat) *LineParser {
	if format == "" {
		format = FormatAuto
	}
	return &LineParser{format: format, cf: defaultCFColumns()}
}

// Parse parses one line, without its newline. It returns errSkip for lines
// without a request (see IsSkip).
func (p *LineParser) Parse(line []byte) (Request, error) {
	line = bytes.TrimRight(line, "\r")
	if len(bytes.TrimSpace(line)) == 0 {
		return Request{}, errSkip
	}
	f := p.format
	if f == FormatAuto {
		f = detectFormat(line)
		if f == FormatAuto {
			return Request{}, errors.New("not a combined, S3 or CloudFront log line")
		}
	}
	switch f {
	case FormatCombined:
		return p.parseCombined(line)
	case FormatS3:
		return p.parseS3(line)
	case FormatCloudFront:
		return p.parseCloudFront(line)
	}
	return Request{}, fmt.Errorf("unknown log format %q", f)
}

// IsSkip reports whether Parse's error means the line carries no request
// but is not malformed either.
func IsSkip(err error) bool { return err == errSkip }

// detectFormat tells the formats apart by shape: CloudFront lines are
// tab-separated and start with a date (or are # headers); before the
// bracketed time, combined lines have three fields (client, ident, user) and
// S3 lines two (bucket owner, bucket).
func detectFormat(line []byte) LogFormat {
	if line[0] == '#' || (len(line) > 11 && line[4] == '-' && line[7] == '-' && line[10] == '\t') {
		return FormatCloudFront
	}
	i := bytes.IndexByte(line, '[')
	if i < 0 {
		return FormatAuto
	}
	switch bytes.Count(line[:i], []byte{' '}) {
	case 3:
		return FormatCombined
	case 2:
		return FormatS3
	}
	return FormatAuto
}

// cutField returns the text up to the next space and the rest after it.
func cutField(s []byte) (field, rest []byte, ok bool) {
	i := bytes.IndexByte(s, ' ')
	if i < 0 {
		return s, nil, len(s) > 0
	}
	return s[:i], s[i+1:], i > 0
}

// cutBracketed reads "[...]" at the start of s.
func cutBracketed(s []byte) (inner, rest []byte, ok bool) {
	if len(s) == 0 || s[0] != '[' {
		return nil, nil, false
	}
	i := bytes.IndexByte(s, ']')
	if i < 0 {
		return nil, nil, false
	}
	rest = s[i+1:]
	if len(rest) > 0 {
		if rest[0] != ' ' {
			return nil, nil, false
		}
		rest = rest[1:]
	}
	return s[1:i], rest, true
}

// cutQuoted reads a double-quoted field at the start of s. Both nginx (\x22)
// and Apache (\") escape quotes inside it, so a backslash always escapes the
// next byte; the escapes are left in place, which is harmless for request
// lines of the paths this analysis looks for.
func cutQuoted(s []byte) (inner, rest []byte, ok bool) {
	if len(s) == 0 || s[0] != '"' {
		return nil, nil, false
	}
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			rest = s[i+1:]
			if len(rest) > 0 {
				if rest[0] != ' ' {
					return nil, nil, false
				}
				rest = rest[1:]
			}
			return s[1:i], rest, true
		}
	}
	return nil, nil, false
}

// parseCombined reads
//
//	client ident user [10/Oct/2000:13:55:36 -0700] "GET /path HTTP/1.1" 200 2326 "referer" "agent"
//
// (the referer and agent are optional, so the common format parses too).
func (p *LineParser) parseCombined(line []byte) (Request, error) {
	var r Request
	s, err := skipFields(line, "client", "ident", "user")
	if err != nil {
		return r, err
	}
	if r.Unix, s, err = cutCLFTime(s); err != nil {
		return r, err
	}
	req, s, ok := cutQuoted(s)
	if !ok {
		return r, errors.New("missing quoted request")
	}
	r.Method, r.Path = p.requestLine(req)
	status, s, _ := cutField(s)
	if r.Status, err = parseStatus(status); err != nil {
		return r, err
	}
	size, _, _ := cutField(s)
	if r.Bytes, err = parseBytes(size); err != nil {
		return r, err
	}
	return r, nil
}

// skipFields drops one space-separated field for each name, and names the first
// one missing.
func skipFields(s []byte, names ...string) ([]byte, error) {
	for _, name := range names {
		var ok bool
		if _, s, ok = cutField(s); !ok {
			return s, fmt.Errorf("missing %s field", name)
		}
	}
	return s, nil
}

// cutCLFTime reads the [bracketed] Common Log Format time that nginx and S3
// logs share.
func cutCLFTime(s []byte) (unix int64, rest []byte, err error) {
	ts, rest, ok := cutBracketed(s)
	if !ok {
		return 0, s, errors.New("missing [time]")
	}
	unix, err = parseCLFTime(ts)
	return unix, rest, err
}

// parseS3 reads an S3 server access log line:
//
//	owner bucket [06/Feb/2019:00:00:38 +0000] ip requester request-id REST.GET.OBJECT key "GET /bucket/key HTTP/1.1" 200 - 2662992 3462992 70 10 "referer" "agent" ...
//
// The method comes from the operation and the path from the key, which is
// the object's name whether the bucket was addressed by path or by host.
func (p *LineParser) parseS3(line []byte) (Request, error) {
	var r Request
	s, err := skipFields(line, "bucket owner", "bucket")
	if err != nil {
		return r, err
	}
	if r.Unix, s, err = cutCLFTime(s); err != nil {
		return r, err
	}
	if s, err = skipFields(s, "remote IP", "requester", "request ID"); err != nil {
		return r, err
	}
	op, s, ok := cutField(s)
	if !ok {
		return r, errors.New("missing operation field")
	}
	key, s, ok := cutField(s)
	if !ok {
		return r, errors.New("missing key field")
	}
	req, s, ok := cutQuoted(s)
	if !ok {
		return r, errors.New("missing quoted request URI")
	}
	// REST.GET.OBJECT: the HTTP method is the middle part.
	if rest, found := bytes.CutPrefix(op, []byte("REST.")); found {
		if i := bytes.IndexByte(rest, '.'); i > 0 {
			r.Method = rest[:i]
		}
	}
	if len(r.Method) == 0 {
		r.Method, _ = p.requestLine(req)
	}
	if string(key) != "-" {
		p.scratch = append(append(p.scratch[:0], '/'), key...)
		r.Path = p.unescape(p.scratch)
	} else {
		_, r.Path = p.requestLine(req)
	}
	status, s, _ := cutField(s)
	if string(status) == "-" {
		// S3's own operations (lifecycle transitions, expirations) have no
		// HTTP status: they are no client's request.
		return Request{}, errSkip
	}
	if r.Status, err = parseStatus(status); err != nil {
		return r, err
	}
	if _, s, ok = cutField(s); !ok {
		return r, errors.New("missing error code field")
	}
	size, _, _ := cutField(s)
	if r.Bytes, err = parseBytes(size); err != nil {
		return r, err
	}
	return r, nil
}

// cfColumns are the positions of the CloudFront fields the analysis reads.
type cfColumns struct{ date, time, bytes, method, uri, status, n int }

// defaultCFColumns is the documented order of a standard log; a #Fields
// header overrides it.
func defaultCFColumns() cfColumns {
	return cfColumns{date: 0, time: 1, bytes: 3, method: 5, uri: 7, status: 8, n: 9}
}

// parseCloudFront reads a tab-separated CloudFront standard log line, or a
// #Fields header that gives the column order of the lines after it.
func (p *LineParser) parseCloudFront(line []byte) (Request, error) {
	var r Request
	if line[0] == '#' {
		if names, ok := bytes.CutPrefix(line, []byte("#Fields:")); ok {
			c := cfColumns{date: -1, time: -1, bytes: -1, method: -1, uri: -1, status: -1}
			for i, name := range bytes.Fields(names) {
				switch string(name) {
				case "date":
					c.date = i
				case "time":
					c.time = i
				case "sc-bytes":
					c.bytes = i
				case "cs-method":
					c.method = i
				case "cs-uri-stem":
					c.uri = i
				case "sc-status":
					c.status = i
				}
				c.n = i + 1
			}
			if min(c.date, c.time, c.bytes, c.method, c.uri, c.status) < 0 {
				return r, errors.New("#Fields lacks one of date, time, sc-bytes, cs-method, cs-uri-stem, sc-status")
			}
			p.cf = c
		}
		return r, errSkip
	}
	c := p.cf
	var fields [64][]byte
	n := 0
	for s := line; n < len(fields); n++ {
		i := bytes.IndexByte(s, '\t')
		if i < 0 {
			fields[n] = s
			n++
			break
		}
		fields[n], s = s[:i], s[i+1:]
	}
	if n < c.n {
		return r, fmt.Errorf("%d tab-separated fields, want at least %d", n, c.n)
	}
	var err error
	if r.Unix, err = parseISOTime(fields[c.date], fields[c.time]); err != nil {
		return r, err
	}
	r.Method = fields[c.method]
	r.Path = p.unescape(fields[c.uri])
	if string(fields[c.status]) == "000" {
		// The viewer went away before CloudFront answered: nothing was served.
		return Request{}, errSkip
	}
	if r.Status, err = parseStatus(fields[c.status]); err != nil {
		return r, err
	}
	if r.Bytes, err = parseBytes(fields[c.bytes]); err != nil {
		return r, err
	}
	return r, nil
}

// requestLine splits "GET /path?query HTTP/1.1" into method and decoded
// path. An unreadable request line (garbage from a TLS handshake, "-") gives
// an empty method: the line is still a request, just not one for a NAR.
func (p *LineParser) requestLine(req []byte) (method, path []byte) {
	method, rest, ok := cutField(req)
	if !ok || len(rest) == 0 {
		return nil, nil
	}
	target, _, _ := cutField(rest)
	if i := bytes.IndexByte(target, '?'); i >= 0 {
		target = target[:i]
	}
	// An absolute-form target (proxies): drop scheme and host.
	if i := bytes.Index(target, []byte("://")); i >= 0 {
		target = target[i+3:]
		j := bytes.IndexByte(target, '/')
		if j < 0 {
			return method, []byte("/")
		}
		target = target[j:]
	}
	return method, p.unescape(target)
}

// unescape percent-decodes a path; paths without '%' (all of Nix's) are
// returned as they are, without copying.
func (p *LineParser) unescape(b []byte) []byte {
	if bytes.IndexByte(b, '%') < 0 {
		return b
	}
	s, err := url.PathUnescape(string(b))
	if err != nil {
		return b
	}
	return []byte(s)
}

func parseStatus(b []byte) (int, error) {
	if len(b) != 3 || b[0] < '1' || b[0] > '5' || b[1] < '0' || b[1] > '9' || b[2] < '0' || b[2] > '9' {
		return 0, fmt.Errorf("status %q is not an HTTP status", truncateBytes(b))
	}
	return int(b[0]-'0')*100 + int(b[1]-'0')*10 + int(b[2]-'0'), nil
}

func parseBytes(b []byte) (int64, error) {
	if string(b) == "-" {
		return 0, nil
	}
	n, ok := atoi(b, 18)
	if !ok {
		return 0, fmt.Errorf("bytes sent %q is not a number", truncateBytes(b))
	}
	return n, nil
}

// atoi parses 1 to max decimal digits.
func atoi(b []byte, max int) (int64, bool) {
	if len(b) == 0 || len(b) > max {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// monthOf numbers an English month abbreviation, 0 if it is none.
func monthOf(b []byte) int64 {
	switch string(b) {
	case "Jan":
		return 1
	case "Feb":
		return 2
	case "Mar":
		return 3
	case "Apr":
		return 4
	case "May":
		return 5
	case "Jun":
		return 6
	case "Jul":
		return 7
	case "Aug":
		return 8
	case "Sep":
		return 9
	case "Oct":
		return 10
	case "Nov":
		return 11
	case "Dec":
		return 12
	}
	return 0
}

// parseCLFTime parses "10/Oct/2000:13:55:36 -0700" by hand: time.Parse is
// several times slower and this runs once per line.
func parseCLFTime(b []byte) (int64, error) {
	if len(b) != 26 || b[2] != '/' || b[6] != '/' || b[11] != ':' || b[14] != ':' || b[17] != ':' || b[20] != ' ' || (b[21] != '+' && b[21] != '-') {
		return 0, fmt.Errorf("time %q is not like 10/Oct/2000:13:55:36 -0700", truncateBytes(b))
	}
	month := monthOf(b[3:6])
	ok := month > 0
	day, ok1 := atoi(b[0:2], 2)
	year, ok2 := atoi(b[7:11], 4)
	hh, ok3 := atoi(b[12:14], 2)
	mm, ok4 := atoi(b[15:17], 2)
	ss, ok5 := atoi(b[18:20], 2)
	zh, ok6 := atoi(b[22:24], 2)
	zm, ok7 := atoi(b[24:26], 2)
	if !(ok && ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60 || zh > 14 || zm > 59 {
		return 0, fmt.Errorf("time %q is not like 10/Oct/2000:13:55:36 -0700", truncateBytes(b))
	}
	off := (zh*60 + zm) * 60
	if b[21] == '-' {
		off = -off
	}
	return daysFromCivil(year, month, day)*86400 + hh*3600 + mm*60 + ss - off, nil
}

// parseISOTime parses CloudFront's "2019-12-04" and "21:02:31" (UTC).
func parseISOTime(d, t []byte) (int64, error) {
	if len(d) != 10 || d[4] != '-' || d[7] != '-' || len(t) != 8 || t[2] != ':' || t[5] != ':' {
		return 0, fmt.Errorf("date and time %q %q are not like 2019-12-04 21:02:31", truncateBytes(d), truncateBytes(t))
	}
	year, ok1 := atoi(d[0:4], 4)
	month, ok2 := atoi(d[5:7], 2)
	day, ok3 := atoi(d[8:10], 2)
	hh, ok4 := atoi(t[0:2], 2)
	mm, ok5 := atoi(t[3:5], 2)
	ss, ok6 := atoi(t[6:8], 2)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || month < 1 || month > 12 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60 {
		return 0, fmt.Errorf("date and time %q %q are not like 2019-12-04 21:02:31", truncateBytes(d), truncateBytes(t))
	}
	return daysFromCivil(year, month, day)*86400 + hh*3600 + mm*60 + ss, nil
}

// daysFromCivil counts days from 1970-01-01 to y-m-d in the proleptic
// Gregorian calendar (Howard Hinnant's algorithm).
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	if y < 0 && y%400 != 0 {
		era--
	}
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

func truncateBytes(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}
