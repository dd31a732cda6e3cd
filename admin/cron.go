package admin

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// cron fields as the broker reads them (robfig/cron's grammar): each field
// is a comma-separated list of *, ?, N, N-M, with an optional /step; month
// and day-of-week also take names (jan, mon). Day-of-week also takes 7 for
// Sunday, as most crons do; the broker does not, so it gets 0.
var cronFields = []struct {
	name     string
	min, max int
	names    []string // names[i] is min+i
}{
	{name: "second", max: 59},
	{name: "minute", max: 59},
	{name: "hour", max: 23},
	{name: "day-of-month", min: 1, max: 31},
	{name: "month", min: 1, max: 12, names: []string{"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}},
	{name: "day-of-week", max: 7, names: []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}},
}

const (
	cronDOM = 3 // index of day-of-month in a 6-field expression
	cronMon = 4
	cronDOW = 5
)

var cronMacros = map[string]bool{"@yearly": true, "@annually": true, "@monthly": true, "@weekly": true, "@daily": true, "@midnight": true, "@hourly": true}

// daysIn is the longest month of each number (February in a leap year:
// the broker looks five years ahead, so a 29 February comes).
var daysIn = [13]int{1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}

// normalizeCron checks a cron expression and returns it as the broker
// takes it: 6 fields (a 5-field one gets "0" seconds), day-of-week 7 as 0;
// a macro as it is. An expression that can never fire (day 31 of
// February) is an error here rather than the broker's "pattern invalid".
func normalizeCron(expr string) (string, error) {
	expr = strings.TrimSpace(expr)
	if strings.HasPrefix(expr, "@") {
		if cronMacros[expr] {
			return expr, nil
		}
		return "", errors.New("unknown macro; use @hourly, @daily, @weekly, @monthly or @yearly (or --every for an interval)")
	}
	f := strings.Fields(expr)
	switch len(f) {
	case 5:
		f = append([]string{"0"}, f...)
	case 6:
	default:
		return "", fmt.Errorf("%d fields; want 5 (minute hour day-of-month month day-of-week) or 6 (second first)", len(f))
	}
	var parsed [6]cronSet
	for i, field := range f {
		set, err := parseCronField(field, i)
		if err != nil {
			return "", fmt.Errorf("%s field %q: %v", cronFields[i].name, field, err)
		}
		parsed[i] = set
	}
	if set := parsed[cronDOW]; set.bits&(1<<7) != 0 {
		f[cronDOW] = sundayAsZero(set)
	}
	// The broker matches a day when both day fields do if either is a
	// plain '*' (or '?'), else when either does. Only the first case can
	// name no day at all: every month has every weekday.
	if dom := parsed[cronDOM]; parsed[cronDOW].star && !dom.star {
		fires := false
		for m := 1; m <= 12 && !fires; m++ {
			if parsed[cronMon].bits&(1<<m) == 0 {
				continue
			}
			for d := 1; d <= daysIn[m]; d++ {
				if dom.bits&(1<<d) != 0 {
					fires = true
					break
				}
			}
		}
		if !fires {
			return "", fmt.Errorf("it never fires: day-of-month %q does not occur in month %q", f[cronDOM], f[cronMon])
		}
	}
	return strings.Join(f, " "), nil
}

// cronSet is what a cron field names: bit n for value n, and whether it is
// a '*' or '?' without a step (which the broker treats apart for days).
type cronSet struct {
	bits uint64
	star bool
}

// parseCronField reads field i of a 6-field cron expression as the broker
// does (a little stricter: no empty list items).
func parseCronField(field string, i int) (cronSet, error) {
	cf := cronFields[i]
	num := func(s string) (int, error) {
		for j, n := range cf.names {
			if strings.EqualFold(s, n) {
				return cf.min + j, nil
			}
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a number", s)
		}
		if n < cf.min || n > cf.max {
			if i == cronDOW {
				return 0, fmt.Errorf("%d is out of range 0-7 (0 and 7 are Sunday)", n)
			}
			return 0, fmt.Errorf("%d is out of range %d-%d", n, cf.min, cf.max)
		}
		return n, nil
	}
	var set cronSet
	for r := range strings.SplitSeq(field, ",") {
		rng, stepStr, hasStep := strings.Cut(r, "/")
		step := 1
		if hasStep {
			n, err := strconv.Atoi(stepStr)
			if err != nil || n < 1 {
				return set, fmt.Errorf("step %q is not a positive number", stepStr)
			}
			step = n
		}
		lo, hi := cf.min, cf.max
		if i == cronDOW {
			hi = 6 // '*' is 0-6, as the broker reads it
		}
		if rng == "*" || rng == "?" {
			set.star = set.star || step == 1
		} else {
			l, h, isRange := strings.Cut(rng, "-")
			a, err := num(l)
			if err != nil {
				return set, err
			}
			lo = a
			switch {
			case isRange:
				b, err := num(h)
				if err != nil {
					return set, err
				}
				if a > b {
					return set, fmt.Errorf("range %s runs backwards", rng)
				}
				hi = b
			case !hasStep:
				hi = a
			case a == 7:
				hi = 7 // "7/2" is Sunday
			}
		}
		for v := lo; v <= hi; v += step {
			set.bits |= 1 << v
		}
	}
	return set, nil
}

// sundayAsZero rewrites a day-of-week field that names 7 (Sunday) for the
// broker, whose day-of-week runs 0-6: as the list of the days it names.
func sundayAsZero(set cronSet) string {
	days := set.bits&0x7f | set.bits>>7&1 // 7 is 0
	var out []string
	for d := range 7 {
		if days&(1<<d) != 0 {
			out = append(out, strconv.Itoa(d))
		}
	}
	return strings.Join(out, ",")
}
