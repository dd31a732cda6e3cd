package bench

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Plot is a chart that draws itself as SVG: a LineChart or a BarChart.
type Plot interface {
	SVG() string
}

// Chart is one chart of the HTML report.
type Chart struct {
	// Name is the chart's anchor in the report and its file name, with
	// ".svg", in WriteSVGs's directory.
	Name string
	// Heading heads the chart's section.
	Heading string
	// Caption, if set, says under the chart how to read it.
	Caption string
	Plot    Plot
}

// Charts returns the charts of the report, each only when the report has
// its figures: the headline throughput, end to end against the pool
// size, and the latency distributions.
//
// A new figure gets its chart from a method that returns it, false when
// the report lacks the figure, listed here. modeBars and modeLines draw a
// figure of each mode, forq beside the baseline, in a few lines.
func (r *Report) Charts() []Chart {
	var out []Chart
	for _, chart := range []func() (Chart, bool){
		r.throughputChart,
		r.scaleChart,
		r.latencyChart,
		r.tailChart,
	} {
		if c, ok := chart(); ok {
			out = append(out, c)
		}
	}
	return out
}

// modes returns the names and figures of the modes the report has: forq,
// and the baseline if measured.
func (r *Report) modes() (names []string, figs []*Figures, colors []string) {
	names, figs, colors = []string{"forq"}, []*Figures{&r.Figures}, []string{ColorForq}
	if r.Baseline != nil {
		names, figs, colors = append(names, "JetStream"), append(figs, r.Baseline), append(colors, ColorBaseline)
	}
	return names, figs, colors
}

// Bar is a group of bars of a chart of the modes: its label, and how to
// read its value from a mode's figures.
type Bar struct {
	Label string
	Of    func(*Figures) float64
}

// modeBars returns a bar chart with a group per bar: a bar per mode, and
// with a baseline the ratio forq ÷ baseline at the right.
func (r *Report) modeBars(title, unit string, bars ...Bar) BarChart {
	names, figs, colors := r.modes()
	c := BarChart{Title: title, Unit: unit, Series: names, Colors: colors}
	if r.Baseline != nil {
		c.NoteHeading = "forq ÷ JetStream"
	}
	for _, b := range bars {
		g := BarGroup{Label: b.Label}
		for _, f := range figs {
			g.Values = append(g.Values, b.Of(f))
		}
		if len(g.Values) == 2 && g.Values[1] != 0 {
			g.Note = fmt.Sprintf("%.2f", g.Values[0]/g.Values[1])
		}
		c.Groups = append(c.Groups, g)
	}
	return c
}

// modeLines returns a series per mode of the points that points reads
// from its figures; a mode without any is left out.
func (r *Report) modeLines(points func(*Figures) []Point) []Series {
	names, figs, colors := r.modes()
	var out []Series
	for i, f := range figs {
		if p := points(f); len(p) > 0 {
			out = append(out, Series{Name: names[i], Color: colors[i], Points: p})
		}
	}
	return out
}

// xsOf returns the x values of the series' points, in order, once each:
// the ticks of an axis of a few measured values.
func xsOf(series []Series) []float64 {
	var xs []float64
	for _, s := range series {
		for _, p := range s.Points {
			xs = append(xs, p.X)
		}
	}
	slices.Sort(xs)
	return slices.Compact(xs)
}

func (r *Report) throughputChart() (Chart, bool) {
	c := r.modeBars("Throughput", "tasks/s (more is better)",
		Bar{"enqueue, one at a time", func(f *Figures) float64 { return f.EnqueuePerSec }},
		Bar{fmt.Sprintf("enqueue, 1 at a time × %d", ConcurrentProducers), func(f *Figures) float64 { return f.EnqueueConcurrentPerSec }},
		Bar{"enqueue, batch", func(f *Figures) float64 { return f.EnqueueBatchPerSec }},
		Bar{"drain a full queue", func(f *Figures) float64 { return f.DrainPerSec }},
		Bar{"end to end", func(f *Figures) float64 { return f.E2EPerSec }},
	)
	caption := "The headline throughput figures."
	if r.Baseline != nil {
		caption += " At the right: forq ÷ JetStream."
	}
	return Chart{Name: "throughput", Heading: "Throughput", Caption: caption, Plot: c}, true
}

// scaleChart draws end-to-end throughput against the pool size.
func (r *Report) scaleChart() (Chart, bool) {
	c := LineChart{
		Title: "End to end against worker processes", XLabel: "worker processes W (log scale)", YLabel: "tasks/s",
		LogX: true, YZero: true,
	}
	c.Series = r.modeLines(func(f *Figures) (p []Point) {
		for _, k := range sortedScale(f.Scale) {
			w, _ := strconv.Atoi(k)
			p = append(p, Point{float64(w), f.Scale[k].E2EPerSec})
		}
		return p
	})
	if len(c.Series) == 0 {
		return Chart{}, false
	}
	c.XTicks = xsOf(c.Series)
	return Chart{
		Name: "scale", Heading: "Pool size", Plot: c,
		Caption: "End-to-end throughput (first publish to last ack) with W worker processes, one producer.",
	}, true
}

// sortedScale returns the keys of scale in the order of their pool size.
func sortedScale(scale map[string]*ScaleFigures) []string {
	return slices.SortedFunc(maps.Keys(scale), func(a, b string) int {
		x, _ := strconv.Atoi(a)
		y, _ := strconv.Atoi(b)
		return x - y
	})
}

// latencyChart draws the latency distributions as cumulative curves.
func (r *Report) latencyChart() (Chart, bool) {
	c := LineChart{
		Title: "Latency, enqueue to handler start", XLabel: "latency (ms, log scale)", YLabel: "percentile of the probes",
		LogX: true, YZero: true,
	}
	c.Series = r.latencySeries(func(p, ms float64) (Point, bool) { return Point{ms, p}, true })
	if len(c.Series) == 0 {
		return Chart{}, false
	}
	return Chart{
		Name: "latency", Heading: "Latency distribution", Plot: c,
		Caption: "The share of probes whose task started in its handler within a latency: one probe at a time at idle (solid), " +
			"and at a fixed rate (dashed). Left and steep is better; the top of a curve is its slowest probes.",
	}, true
}

// latencySeries returns a series per latency distribution of the report:
// each mode idle (solid) and under load (dashed), with point(p, ms) the
// point of the latency ms at percentile p, or false to leave it out.
func (r *Report) latencySeries(point func(p, ms float64) (Point, bool)) []Series {
	names, figs, colors := r.modes()
	var out []Series
	for i, f := range figs {
		for _, d := range []struct {
			dist   *Distribution
			phase  string
			dashed bool
		}{
			{f.LatencyDist, "idle", false},
			{f.LoadLatencyDist, fmt.Sprintf("at %g/s", r.Settings.Rate), true},
		} {
			if d.dist == nil {
				continue
			}
			s := Series{Name: names[i] + ", " + d.phase, Color: colors[i], Dashed: d.dashed}
			for j, ms := range d.dist.Ms {
				if j >= len(d.dist.Percentiles) {
					break
				}
				if pt, ok := point(d.dist.Percentiles[j], ms); ok {
					s.Points = append(s.Points, pt)
				}
			}
			out = append(out, s)
		}
	}
	return out
}

// tailChart draws the latency against the percentile on a scale of
// nines (90, 99, 99.9 equally spaced), where the tail is not squeezed.
func (r *Report) tailChart() (Chart, bool) {
	c := LineChart{
		Title: "Latency by percentile", XLabel: "percentile (nines scale)", YLabel: "latency (ms, log scale)",
		LogY: true, XTicks: []float64{0, 1, 2, 3}, XTickLabels: []string{"0", "90", "99", "99.9"},
	}
	c.Series = r.latencySeries(func(p, ms float64) (Point, bool) {
		// -log10 of the share slower: 0 at p0, 1 at p90, 2 at p99; the
		// slowest probe (p100) has no place on it.
		return Point{-math.Log10(1 - p/100), ms}, p < 100
	})
	if len(c.Series) == 0 {
		return Chart{}, false
	}
	return Chart{
		Name: "latency-tail", Heading: "Latency tail", Plot: c,
		Caption: "The same distributions by percentile, each step of nines as wide as the last: the tail. Lower is better.",
	}, true
}

//go:embed report.html.tmpl
var reportTemplate string

var reportHTML = template.Must(template.New("report").Parse(reportTemplate))

// WriteHTML writes the report as one self-contained HTML page: the
// settings, the charts as inline SVG, and the table of figures. It has no
// script and loads nothing.
func (r *Report) WriteHTML(w io.Writer) error {
	type chart struct {
		Name, Heading, Caption string
		SVG                    template.HTML
	}
	type row struct {
		Name, Forq, Base, Ratio string
		Sub                     bool // a detail of the row above
	}
	type kv struct{ Key, Value string }
	data := struct {
		Title    string
		Settings []string
		Charts   []chart
		Baseline bool
		Rows     []row
		Raw      []kv
	}{Title: "forq bench", Settings: r.settingsLines(), Baseline: r.Baseline != nil}
	for _, c := range r.Charts() {
		// The SVG is built by this package, its text escaped.
		data.Charts = append(data.Charts, chart{c.Name, c.Heading, c.Caption, template.HTML(c.Plot.SVG())}) //nolint:gosec // built here, every text in it escaped
	}
	for _, x := range r.rows() {
		name := strings.TrimLeft(x.name, " ")
		data.Rows = append(data.Rows, row{name, num(x.forq, x.digits), num(x.base, x.digits), x.ratio(), name != x.name})
	}
	settings := toMap(r.Settings)
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		data.Raw = append(data.Raw, kv{k, jsonValue(settings[k])})
	}
	return reportHTML.Execute(w, data)
}

// jsonValue formats a value decoded from JSON: numbers without an
// exponent, the rest as JSON.
func jsonValue(v any) string {
	if f, ok := v.(float64); ok && f == math.Trunc(f) && math.Abs(f) < 1e15 {
		return strconv.FormatInt(int64(f), 10)
	}
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// WriteSVGs writes each chart of the report to dir as NAME.svg, making dir
// if need be, and returns the files written.
func (r *Report) WriteSVGs(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	var files []string
	for _, c := range r.Charts() {
		file := filepath.Join(dir, c.Name+".svg")
		if err := os.WriteFile(file, []byte(c.Plot.SVG()), 0o644); err != nil { //nolint:gosec // a chart for anyone to read
			return files, err
		}
		files = append(files, file)
	}
	return files, nil
}
