package daemon

import (
	"strings"
	"testing"
	"time"
)

func TestRequestCountersByRouteAndStatus(t *testing.T) {
	m := NewMetrics()
	for _, r := range []struct {
		route  string
		status int
	}{{"nar", 200}, {"narinfo", 404}, {"nar", 200}, {"narinfo", 200}, {"nar", 404}} {
		m.request(r.route, r.status, time.Millisecond)
	}
	var b strings.Builder
	if _, err := m.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(line, "shoal_requests_total{") {
			got = append(got, line)
		}
	}
	want := []string{
		`shoal_requests_total{route="nar",status="200"} 2`,
		`shoal_requests_total{route="nar",status="404"} 1`,
		`shoal_requests_total{route="narinfo",status="200"} 1`,
		`shoal_requests_total{route="narinfo",status="404"} 1`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("request counters:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
