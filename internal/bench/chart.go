package bench

import (
	"fmt"
	"html"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Colours of the two modes, the same in every chart; Palette colours any
// other series.
const (
	ColorForq     = "#1f5fa8"
	ColorBaseline = "#e07b1a"
)

// Palette colours the series of a chart that name no colour, in order.
var Palette = []string{ColorForq, ColorBaseline, "#2a9d4b", "#c0392b", "#7d4fb0", "#8c6d31", "#d45fa8", "#555555"}

// Point is one point of a line chart.
type Point struct{ X, Y float64 }

// Series is a named line of a LineChart.
type Series struct {
	// Name is shown in the legend.
	Name   string
	Points []Point
	// Color is an SVG colour; empty takes the next colour of Palette.
	Color string
	// Dashed draws a dashed line.
	Dashed bool
}

// LineChart draws named series of (x, y) points as lines, with axes, a
// grid and a legend. The zero value is an empty chart.
type LineChart struct {
	Title, XLabel, YLabel string
	// LogX and LogY make an axis logarithmic (base 10); points that are
	// not positive on such an axis are left out.
	LogX, LogY bool
	// XTicks, if set, are the ticks of the x axis (say the pool sizes
	// measured); otherwise they are chosen from the data.
	XTicks []float64
	// XTickLabels, if set, label XTicks (one each), say to show a
	// transformed axis in the data's own terms.
	XTickLabels []string
	// YZero makes the y axis start at 0.
	YZero  bool
	Series []Series
	// Width and Height in pixels; 0 is 720 × 420.
	Width, Height int
}

// BarGroup is one labelled group of bars of a BarChart: a value per
// series of the chart.
type BarGroup struct {
	Label string
	// Values[i] is the value of the chart's Series[i]; a missing or NaN
	// value draws no bar.
	Values []float64
	// Note is written at the right of the group, say a ratio.
	Note string
}

// BarChart draws labelled values as horizontal bars, grouped: one bar per
// series in each group, from 0. The zero value is an empty chart.
type BarChart struct {
	Title string
	// Unit labels the value axis.
	Unit string
	// Series names the bars of each group, in the legend; Colors colour
	// them (empty: Palette).
	Series, Colors []string
	Groups         []BarGroup
	// NoteHeading, if set, heads the column of the groups' notes.
	NoteHeading string
	// Width in pixels; 0 is 720. The height follows from the groups.
	Width int
}

// Margins and text of every chart.
const (
	chartFont   = `font-family="Helvetica, Arial, sans-serif"`
	marginLeft  = 72
	marginRight = 24
	marginTop   = 64 // title and legend
	marginBot   = 52
)

// svgDoc accumulates an SVG document.
type svgDoc struct{ strings.Builder }

func (d *svgDoc) f(format string, a ...any) { fmt.Fprintf(&d.Builder, format, a...) }

// text writes s, escaped, at x, y with attrs.
func (d *svgDoc) text(x, y float64, attrs, s string) {
	d.f(`<text x="%s" y="%s" %s>%s</text>`+"\n", coord(x), coord(y), attrs, html.EscapeString(s))
}

func (d *svgDoc) open(w, h int, title string) {
	d.f(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" %s font-size="12" role="img">`+"\n", w, h, w, h, chartFont)
	d.f("<title>%s</title>\n", html.EscapeString(title))
	d.f(`<rect width="%d" height="%d" fill="#ffffff"/>`+"\n", w, h)
	d.text(float64(w)/2, 22, `text-anchor="middle" font-size="15" font-weight="bold"`, title)
}

// legendRow is the height of a row of the legend.
const legendRow = 18

// legendPlaces returns where each legend entry of names goes, in rows
// under the title that wrap at width w, and the height of the rows.
func legendPlaces(names []string, w int) (xs, ys []float64, height int) {
	x, y := float64(marginLeft), 42.0
	for _, n := range names {
		iw := 30 + 7*float64(len([]rune(n)))
		if x > marginLeft && x+iw > float64(w-marginRight) {
			x, y = marginLeft, y+legendRow
		}
		xs, ys = append(xs, x), append(ys, y)
		x += iw + 24
	}
	return xs, ys, int(y-42) + legendRow
}

// legend writes one entry per name under the title, in rows that wrap
// at width w.
func (d *svgDoc) legend(names, colors []string, dashed []bool, w int) {
	xs, ys, _ := legendPlaces(names, w)
	for i, n := range names {
		dash := ""
		if dashed != nil && dashed[i] {
			dash = ` stroke-dasharray="6 4"`
		}
		d.f(`<g class="legend" data-series="%s"><line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="3"%s/>`,
			html.EscapeString(n), coord(xs[i]), coord(ys[i]), coord(xs[i]+24), coord(ys[i]), colors[i], dash)
		d.text(xs[i]+30, ys[i]+4, "", n)
		d.f("</g>\n")
	}
}

func coord(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

// axis maps values to pixels.
type axis struct {
	lo, hi float64 // the values at the ends
	log    bool
	p0, p1 float64 // the pixels at the ends
}

func (a axis) pos(v float64) float64 {
	t := func(x float64) float64 {
		if a.log {
			return math.Log10(x)
		}
		return x
	}
	return a.p0 + (t(v)-t(a.lo))/(t(a.hi)-t(a.lo))*(a.p1-a.p0)
}

// newAxis returns an axis over vals (or 0 to 1 without any) and its
// ticks; ticks, if given, are the ticks. zero includes 0 on a linear axis.
func newAxis(vals []float64, log, zero bool, ticks []float64) (axis, []float64) {
	var in []float64
	for _, v := range vals {
		if !math.IsNaN(v) && !math.IsInf(v, 0) && (!log || v > 0) {
			in = append(in, v)
		}
	}
	if log {
		for _, v := range ticks {
			if v > 0 {
				in = append(in, v)
			}
		}
	} else {
		in = append(in, ticks...)
	}
	if len(in) == 0 {
		in = []float64{1}
	}
	lo, hi := slices.Min(in), slices.Max(in)
	if log {
		if lo == hi {
			lo, hi = lo/2, hi*2
		}
		if len(ticks) > 0 {
			pad := (math.Log10(hi) - math.Log10(lo)) * 0.05
			return axis{lo: lo / math.Pow(10, pad), hi: hi * math.Pow(10, pad), log: true}, ticks
		}
		lo, hi = nice125(lo, false), nice125(hi, true)
		return axis{lo: lo, hi: hi, log: true}, logTicks(lo, hi)
	}
	if zero {
		lo, hi = min(lo, 0), max(hi, 0)
	}
	if lo == hi {
		if lo == 0 {
			hi = 1
		} else {
			lo, hi = lo-1, hi+1
		}
	}
	if len(ticks) > 0 {
		pad := (hi - lo) * 0.05
		return axis{lo: lo - pad, hi: hi + pad}, ticks
	}
	step := niceStep((hi - lo) / 5)
	lo, hi = math.Floor(lo/step)*step, math.Ceil(hi/step)*step
	var t []float64
	for v := lo; v <= hi+step/2; v += step {
		t = append(t, math.Round(v/step)*step)
	}
	return axis{lo: lo, hi: hi}, t
}

// niceStep returns 1, 2 or 5 times a power of ten, at least raw.
func niceStep(raw float64) float64 {
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5} {
		if raw <= m*mag {
			return m * mag
		}
	}
	return 10 * mag
}

// nice125 rounds v, positive, down (or up) to 1, 2 or 5 times a power
// of ten.
func nice125(v float64, up bool) float64 {
	e := math.Pow(10, math.Floor(math.Log10(v)))
	m := v / e
	if up {
		for _, s := range []float64{1, 2, 5} {
			if m <= s*(1+1e-9) {
				return s * e
			}
		}
		return 10 * e
	}
	for _, s := range []float64{5, 2} {
		if m >= s*(1-1e-9) {
			return s * e
		}
	}
	return e
}

// logTicks returns the ticks of a log axis from lo to hi: 1, 2 and 5
// times each power of ten over 2.5 decades or less, the powers alone over
// more.
func logTicks(lo, hi float64) []float64 {
	var t []float64
	mults := []float64{1, 2, 5}
	if math.Log10(hi/lo) > 2.5 {
		mults = mults[:1]
	}
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range mults {
			if v := m * math.Pow(10, e); v >= lo*(1-1e-9) && v <= hi*(1+1e-9) {
				t = append(t, v)
			}
		}
	}
	return t
}

// label formats a tick or a value: 12k, 1.5M, 0.25.
func label(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case a >= 1e4:
		return strconv.FormatFloat(math.Round(v/100)/10, 'f', -1, 64) + "k"
	case a >= 1000:
		return strconv.FormatFloat(math.Round(v/10)/100, 'f', -1, 64) + "k"
	case a >= 100 || a == 0:
		return strconv.FormatFloat(math.Round(v), 'f', -1, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

// SVG returns the chart as a standalone SVG document, which HTML can hold
// inline too.
func (c LineChart) SVG() string {
	w, h := c.Width, c.Height
	if w == 0 {
		w = 720
	}
	if h == 0 {
		h = 420
	}
	names, colors, dashed := make([]string, len(c.Series)), make([]string, len(c.Series)), make([]bool, len(c.Series))
	for i, s := range c.Series {
		names[i], colors[i], dashed[i] = s.Name, s.Color, s.Dashed
		if colors[i] == "" {
			colors[i] = Palette[i%len(Palette)]
		}
	}
	var xs, ys []float64
	for _, s := range c.Series {
		for _, p := range s.Points {
			xs, ys = append(xs, p.X), append(ys, p.Y)
		}
	}
	ax, xt := newAxis(xs, c.LogX, false, c.XTicks)
	ay, yt := newAxis(ys, c.LogY, c.YZero, nil)
	ax.p0, ax.p1 = marginLeft, float64(w-marginRight)
	_, _, lh := legendPlaces(names, w)
	h += lh - legendRow // the legend's extra rows
	ay.p0, ay.p1 = float64(h-marginBot), float64(marginTop-legendRow+lh+8)

	var d svgDoc
	d.open(w, h, c.Title)
	d.legend(names, colors, dashed, w)
	d.grid(ax, ay, xt, yt, c.XTickLabels)
	d.text((ax.p0+ax.p1)/2, float64(h)-12, `text-anchor="middle"`, c.XLabel)
	d.f(`<text transform="translate(16 %s) rotate(-90)" text-anchor="middle">%s</text>`+"\n", coord((ay.p0+ay.p1)/2), html.EscapeString(c.YLabel))
	for i, s := range c.Series {
		d.line(s, colors[i], c.LogX, c.LogY, ax, ay)
	}
	if len(c.Series) == 0 {
		d.text((ax.p0+ax.p1)/2, (ay.p0+ay.p1)/2, `text-anchor="middle" fill="#888888"`, "no data")
	}
	d.f("</svg>\n")
	return d.String()
}

// grid draws the frame, the grid lines and the tick labels of two axes.
// xLabels, if as many as xt, label the x ticks.
func (d *svgDoc) grid(ax, ay axis, xt, yt []float64, xLabels []string) {
	d.f(`<g class="grid" stroke="#dddddd" stroke-width="1">`)
	for _, v := range xt {
		d.f(`<line x1="%s" y1="%s" x2="%s" y2="%s"/>`, coord(ax.pos(v)), coord(ay.p0), coord(ax.pos(v)), coord(ay.p1))
	}
	for _, v := range yt {
		d.f(`<line x1="%s" y1="%s" x2="%s" y2="%s"/>`, coord(ax.p0), coord(ay.pos(v)), coord(ax.p1), coord(ay.pos(v)))
	}
	d.f("</g>\n")
	d.f(`<rect x="%s" y="%s" width="%s" height="%s" fill="none" stroke="#444444"/>`+"\n",
		coord(ax.p0), coord(ay.p1), coord(ax.p1-ax.p0), coord(ay.p0-ay.p1))
	for i, v := range xt {
		l := label(v)
		if len(xLabels) == len(xt) {
			l = xLabels[i]
		}
		d.text(ax.pos(v), ay.p0+16, `text-anchor="middle" fill="#333333"`, l)
	}
	for _, v := range yt {
		d.text(ax.p0-6, ay.pos(v)+4, `text-anchor="end" fill="#333333"`, label(v))
	}
}

// line draws one series, with a marker at each point when there are few.
func (d *svgDoc) line(s Series, color string, logX, logY bool, ax, ay axis) {
	var pts []Point
	for _, p := range s.Points {
		if (!logX || p.X > 0) && (!logY || p.Y > 0) && !math.IsNaN(p.X) && !math.IsNaN(p.Y) {
			pts = append(pts, p)
		}
	}
	d.f(`<g class="series" data-series="%s"><title>%s</title>`, html.EscapeString(s.Name), html.EscapeString(s.Name))
	if len(pts) > 0 {
		var path strings.Builder
		for i, p := range pts {
			cmd := "L"
			if i == 0 {
				cmd = "M"
			}
			fmt.Fprintf(&path, "%s%s %s ", cmd, coord(ax.pos(p.X)), coord(ay.pos(p.Y)))
		}
		dash := ""
		if s.Dashed {
			dash = ` stroke-dasharray="6 4"`
		}
		d.f(`<path d="%s" fill="none" stroke="%s" stroke-width="2.5" stroke-linejoin="round"%s/>`,
			strings.TrimSpace(path.String()), color, dash)
	}
	if len(pts) <= 20 {
		for _, p := range pts {
			d.f(`<circle cx="%s" cy="%s" r="4" fill="%s"/>`, coord(ax.pos(p.X)), coord(ay.pos(p.Y)), color)
		}
	}
	d.f("</g>\n")
}

// Bar geometry.
const (
	barHeight   = 16
	barGroupGap = 14
	barLabelW   = 230 // room for the group labels
	barNoteW    = 120 // room for the values and notes at the right
)

// SVG returns the chart as a standalone SVG document, which HTML can hold
// inline too.
func (c BarChart) SVG() string {
	w := c.Width
	if w == 0 {
		w = 720
	}
	n := max(len(c.Series), 1)
	plotH := len(c.Groups)*(n*barHeight+barGroupGap) + barGroupGap
	_, _, lh := legendPlaces(c.Series, w)
	top := marginTop - legendRow + lh
	h := top + plotH + marginBot
	var vals []float64
	for _, g := range c.Groups {
		vals = append(vals, g.Values...)
	}
	ax, xt := newAxis(vals, false, true, nil)
	ax.p0, ax.p1 = barLabelW, float64(w-barNoteW)
	ay := axis{lo: 0, hi: 1, p0: float64(top + plotH), p1: float64(top)}

	colors := make([]string, len(c.Series))
	for i := range colors {
		colors[i] = Palette[i%len(Palette)]
		if i < len(c.Colors) && c.Colors[i] != "" {
			colors[i] = c.Colors[i]
		}
	}
	var d svgDoc
	d.open(w, h, c.Title)
	d.legend(c.Series, colors, nil, w)
	d.grid(ax, ay, xt, nil, nil)
	d.text((ax.p0+ax.p1)/2, float64(h)-12, `text-anchor="middle"`, c.Unit)
	if c.NoteHeading != "" {
		d.text(float64(w-6), float64(top-6), `text-anchor="end" font-size="11" fill="#333333"`, c.NoteHeading)
	}
	y := float64(top + barGroupGap)
	for _, g := range c.Groups {
		gh := float64(n * barHeight)
		d.f(`<g class="bars" data-group="%s">`, html.EscapeString(g.Label))
		d.text(ax.p0-8, y+gh/2+4, `text-anchor="end"`, g.Label)
		for i, v := range g.Values {
			if i >= len(c.Series) || math.IsNaN(v) {
				continue
			}
			by := y + float64(i*barHeight)
			x0, x1 := ax.pos(0), ax.pos(v)
			d.f(`<rect x="%s" y="%s" width="%s" height="%d" fill="%s"><title>%s: %s</title></rect>`,
				coord(min(x0, x1)), coord(by+1), coord(math.Abs(x1-x0)), barHeight-2, colors[i],
				html.EscapeString(c.Series[i]), label(v))
			d.text(max(x0, x1)+4, by+barHeight-4, `font-size="11" fill="#333333"`, label(v))
		}
		if g.Note != "" {
			d.text(float64(w-6), y+gh/2+4, `text-anchor="end" font-weight="bold"`, g.Note)
		}
		d.f("</g>\n")
		y += gh + barGroupGap
	}
	d.f("</svg>\n")
	return d.String()
}
