package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

const day = 24 * time.Hour

// parseDuration is the one parser behind every duration flag, so "90d" means the same
// to retire as to analyze logs: Go's units (ns to h) plus d (days) and w (weeks), in
// any combination ("1d12h"). A bare number other than 0 is refused: "5" could mean seconds
// or days.
func parseDuration(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty duration: want e.g. 90d, 12h or 30s")
	}
	if t == "0" {
		return 0, nil // the one number that needs no unit
	}
	neg := strings.HasPrefix(t, "-")
	rest := strings.TrimLeft(t, "+-")
	var total time.Duration
	for rest != "" {
		i := 0
		for i < len(rest) && (rest[i] >= '0' && rest[i] <= '9' || rest[i] == '.') {
			i++
		}
		j := i
		for j < len(rest) && !(rest[j] >= '0' && rest[j] <= '9' || rest[j] == '.') {
			j++
		}
		num, unit := rest[:i], rest[i:j]
		if num == "" || unit == "" {
			return 0, fmt.Errorf("duration %q: want a number and a unit (d, h, m, s, ms), e.g. 90d, 12h or 30s", s)
		}
		var part time.Duration
		switch unit {
		case "d", "w":
			n, err := strconv.ParseFloat(num, 64)
			if err != nil {
				return 0, fmt.Errorf("duration %q: %q is not a number", s, num)
			}
			per := day
			if unit == "w" {
				per = 7 * day
			}
			part = time.Duration(n * float64(per))
		default:
			d, err := time.ParseDuration(num + unit)
			if err != nil {
				return 0, fmt.Errorf("duration %q: unknown unit %q (use d, h, m, s, ms)", s, unit)
			}
			part = d
		}
		total += part
		rest = rest[j:]
	}
	if neg {
		total = -total
	}
	return total, nil
}

// formatDuration prints whole days as days ("90d") and anything else as Go does.
func formatDuration(d time.Duration) string {
	if d != 0 && d%day == 0 {
		return strconv.FormatInt(int64(d/day), 10) + "d"
	}
	return d.String()
}

// durationValue is a flag.Value parsed by parseDuration.
type durationValue struct{ d time.Duration }

func (v *durationValue) Set(s string) error {
	d, err := parseDuration(s)
	if err != nil {
		return err
	}
	v.d = d
	return nil
}

func (v *durationValue) String() string {
	if v == nil {
		return ""
	}
	return formatDuration(v.d)
}

// durationFlag is a duration flag that takes days; read it with durationOf.
func durationFlag(name string, value time.Duration, usage string) *cli.GenericFlag {
	return &cli.GenericFlag{Name: name, Value: &durationValue{value}, Usage: usage, EnvVars: env(name)}
}

// durationOf reads a flag made by durationFlag.
func durationOf(c *cli.Context, name string) time.Duration {
	if v, ok := c.Generic(name).(*durationValue); ok {
		return v.d
	}
	return 0
}

// parseAge is parseDuration for cut-off ages, which can't be negative.
func parseAge(s string) (time.Duration, error) {
	d, err := parseDuration(s)
	if err == nil && d < 0 {
		err = fmt.Errorf("age %q is negative", s)
	}
	return d, err
}
