// Package charttest reads back the SVG charts package chart helps draw, for tests
// that check what a chart shows.
package charttest

import (
	"bytes"
	"encoding/xml"
	"io"
	"strconv"
	"testing"
)

// Element is one element of a drawn SVG, with its attributes and text.
type Element struct {
	Name  string
	Attrs map[string]string
	Text  string
}

// Num reads attribute attr as a number; anything else fails t.
func (e Element) Num(t *testing.T, attr string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(e.Attrs[attr], 64)
	if err != nil {
		t.Fatalf("<%s %s=%q>: %v", e.Name, attr, e.Attrs[attr], err)
	}
	return v
}

// Parse returns every element of svg in document order; a malformed SVG fails t.
func Parse(t *testing.T, svg []byte) []Element {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(svg))
	var out []Element
	var open []int
	for {
		tk, err := d.Token()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed: %v", err)
		}
		switch tk := tk.(type) {
		case xml.StartElement:
			e := Element{Name: tk.Name.Local, Attrs: map[string]string{}}
			for _, a := range tk.Attr {
				e.Attrs[a.Name.Local] = a.Value
			}
			out = append(out, e)
			open = append(open, len(out)-1)
		case xml.CharData:
			if len(open) > 0 {
				out[open[len(open)-1]].Text += string(tk)
			}
		case xml.EndElement:
			open = open[:len(open)-1]
		}
	}
}
