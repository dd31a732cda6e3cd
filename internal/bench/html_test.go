package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fullReport returns a report with every figure: forq, the baseline,
// pool sizes and latency distributions.
func fullReport() *Report {
	dist := func(scale float64) *Distribution {
		var ns []int64
		for i := 1; i <= 1000; i++ {
			ns = append(ns, int64(scale*float64(200_000+i*i)))
		}
		return distribution(ns)
	}
	figs := func(k float64) *Figures {
		return &Figures{
			EnqueuePerSec: 6000 * k, EnqueueConcurrentPerSec: 20000 * k, EnqueueBatchPerSec: 80000 * k, DrainPerSec: 70000 * k, E2EPerSec: 40000 * k,
			LatencyP50Ms: 0.3 / k, LatencyP99Ms: 0.9 / k, LoadLatencyP50Ms: 0.4 / k, LoadLatencyP99Ms: 1.5 / k,
			LoadPerSec: 2000, LatencyDist: dist(1 / k), LoadLatencyDist: dist(1.5 / k),
			Scale: map[string]*ScaleFigures{
				"1": {E2EPerSec: 35000 * k}, "2": {E2EPerSec: 38000 * k}, "4": {E2EPerSec: 31000 * k}, "8": {E2EPerSec: 30000 * k},
			},
		}
	}
	r := &Report{Settings: Settings{Tasks: 5000, Workers: 2, Concurrency: 256, PayloadSize: 64, Rate: 2000, Rounds: 1,
		Scale: []int{1, 2, 4, 8}, Broker: "embedded <test> & co", Embedded: true, CPUs: 2, CPUModel: "Test CPU"}}
	r.Figures = *figs(0.9)
	r.Baseline = figs(1)
	r.Ratio = ratio(&r.Figures, r.Baseline)
	return r
}

// svgOf is what a test reads of one <svg> element.
type svgOf struct {
	Title  string   // its <title>
	Series []string // the data-series of its lines and legend entries
	Groups []string // the data-group of its bar groups
}

// parseHTML checks that page is well-formed (the report is written as
// XML-compatible HTML) and returns its <svg> elements and its text.
func parseHTML(t *testing.T, page string) (svgs []svgOf, text string) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(page))
	d.Strict = true
	var txt strings.Builder
	depth := -1 // depth inside the current <svg>, -1 outside
	var cur *svgOf
	inTitle := false
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the HTML does not parse: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if tok.Name.Local == "svg" {
				svgs = append(svgs, svgOf{})
				cur, depth = &svgs[len(svgs)-1], 0
			}
			if depth >= 0 {
				depth++
				inTitle = tok.Name.Local == "title" && depth == 2
				for _, a := range tok.Attr {
					switch a.Name.Local {
					case "data-series":
						if !slices.Contains(cur.Series, a.Value) {
							cur.Series = append(cur.Series, a.Value)
						}
					case "data-group":
						cur.Groups = append(cur.Groups, a.Value)
					}
				}
			}
		case xml.EndElement:
			if depth >= 0 {
				depth--
				inTitle = false
				if depth == 0 {
					depth = -1
				}
			}
		case xml.CharData:
			if inTitle {
				cur.Title += string(tok)
			}
			txt.Write(tok)
		}
	}
	return svgs, txt.String()
}

// checkOffline fails if doc refers to anything on a network, save the
// SVG namespace.
func checkOffline(t *testing.T, doc string) {
	t.Helper()
	rest := strings.ReplaceAll(doc, `xmlns="http://www.w3.org/2000/svg"`, "")
	for _, bad := range []string{"http://", "https://", "<script", "src=", "@import", "url("} {
		if strings.Contains(rest, bad) {
			t.Errorf("the document holds %q", bad)
		}
	}
}

func TestWriteHTML(t *testing.T) {
	for _, c := range []struct {
		name   string
		report func() *Report
		want   map[string][]string // chart title → series
		rows   []string            // table rows expected
	}{
		{
			name:   "every figure",
			report: fullReport,
			want: map[string][]string{
				"Throughput":                          {"forq", "JetStream"},
				"End to end against worker processes": {"forq", "JetStream"},
				"Latency, enqueue to handler start":   {"forq, idle", "forq, at 2000/s", "JetStream, idle", "JetStream, at 2000/s"},
				"Latency by percentile":               {"forq, idle", "forq, at 2000/s", "JetStream, idle", "JetStream, at 2000/s"},
			},
			rows: []string{"end to end (tasks/s)", "W=8: end to end (tasks/s)", "forq/JetStream"},
		},
		{
			name: "no baseline, no scale, no distributions",
			report: func() *Report {
				r := fullReport()
				r.Baseline, r.Ratio, r.Scale, r.LatencyDist, r.LoadLatencyDist = nil, nil, nil, nil, nil
				return r
			},
			want: map[string][]string{"Throughput": {"forq"}},
			rows: []string{"end to end (tasks/s)"},
		},
		{
			name: "a scale and distributions without a baseline",
			report: func() *Report {
				r := fullReport()
				r.Baseline, r.Ratio = nil, nil
				return r
			},
			want: map[string][]string{
				"Throughput":                          {"forq"},
				"End to end against worker processes": {"forq"},
				"Latency, enqueue to handler start":   {"forq, idle", "forq, at 2000/s"},
				"Latency by percentile":               {"forq, idle", "forq, at 2000/s"},
			},
			rows: []string{"W=1: end to end (tasks/s)"},
		},
		{
			name:   "an empty report",
			report: func() *Report { return &Report{} },
			want:   map[string][]string{"Throughput": {"forq"}},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := c.report().WriteHTML(&b); err != nil {
				t.Fatal(err)
			}
			page := b.String()
			checkOffline(t, page)
			if strings.Contains(page, "NaN") || strings.Contains(page, "Inf") {
				t.Errorf("the page holds NaN or Inf")
			}
			svgs, text := parseHTML(t, page)
			got := map[string][]string{}
			for _, s := range svgs {
				got[s.Title] = s.Series
			}
			if len(got) != len(c.want) || len(svgs) != len(c.want) {
				t.Errorf("got charts %v, want %v", got, c.want)
			}
			for title, series := range c.want {
				if !slices.Equal(got[title], series) {
					t.Errorf("chart %q: got series %q, want %q", title, got[title], series)
				}
			}
			for _, row := range c.rows {
				if !strings.Contains(text, row) {
					t.Errorf("the page has no %q", row)
				}
			}
			if c.rows == nil {
				return
			}
			if !strings.Contains(text, "embedded <test> & co") {
				t.Errorf("the settings are missing or escaped twice")
			}
		})
	}
}

func TestThroughputBars(t *testing.T) {
	var b bytes.Buffer
	if err := fullReport().WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	svgs, _ := parseHTML(t, b.String())
	want := []string{"enqueue, one at a time", "enqueue, 1 at a time × 16", "enqueue, batch", "drain a full queue", "end to end"}
	if !slices.Equal(svgs[0].Groups, want) {
		t.Errorf("got groups %q, want %q", svgs[0].Groups, want)
	}
	// forq is 0.9 × the baseline in every figure of fullReport.
	if n := strings.Count(b.String(), ">0.90</text>"); n != len(want) {
		t.Errorf("got %d ratios 0.90, want %d", n, len(want))
	}
}

func TestWriteSVGs(t *testing.T) {
	dir := t.TempDir()
	files, err := fullReport().WriteSVGs(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// A standalone SVG: XML with the SVG namespace.
		var root struct {
			XMLName xml.Name
		}
		if err := xml.Unmarshal(b, &root); err != nil {
			t.Errorf("%s does not parse: %v", f, err)
		}
		if root.XMLName.Space != "http://www.w3.org/2000/svg" || root.XMLName.Local != "svg" {
			t.Errorf("%s: got root %v, want svg in the SVG namespace", f, root.XMLName)
		}
		checkOffline(t, string(b))
	}
	if want := []string{"throughput.svg", "scale.svg", "latency.svg", "latency-tail.svg"}; !slices.Equal(names, want) {
		t.Errorf("got files %q, want %q", names, want)
	}
}

func TestDistribution(t *testing.T) {
	if d := distribution(nil); d != nil {
		t.Errorf("distribution(nil) = %+v, want nil", d)
	}
	var ns []int64
	for i := 1000; i >= 1; i-- { // 1 ms to 1000 ms, unsorted
		ns = append(ns, int64(i)*1e6)
	}
	d := distribution(ns)
	if d.N != 1000 || len(d.Ms) != len(DistPercentiles) || !slices.Equal(d.Percentiles, DistPercentiles) {
		t.Fatalf("got n %d, %d values for %d percentiles, want 1000 and %d", d.N, len(d.Ms), len(d.Percentiles), len(DistPercentiles))
	}
	for _, c := range []struct{ p, ms float64 }{{0, 1}, {1, 10}, {50, 500}, {99, 990}, {99.9, 999}, {100, 1000}} {
		i := slices.Index(d.Percentiles, c.p)
		if d.Ms[i] != c.ms || d.Ms[i] != pct(ns, c.p) {
			t.Errorf("p%g: got %g ms (pct: %g), want %g", c.p, d.Ms[i], pct(ns, c.p), c.ms)
		}
	}
	if !slices.IsSorted(d.Ms) {
		t.Errorf("the latencies are not in order: %v", d.Ms)
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	r := fullReport()
	if _, ok := r.Ratio["latency_dist"]; ok {
		t.Errorf("the ratio holds the latency distribution")
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	var h1, h2 bytes.Buffer
	if err := r.WriteHTML(&h1); err != nil {
		t.Fatal(err)
	}
	if err := back.WriteHTML(&h2); err != nil {
		t.Fatal(err)
	}
	if h1.String() != h2.String() {
		t.Errorf("a report read back from JSON draws otherwise")
	}
}

func TestBest(t *testing.T) {
	fast, slow := &Distribution{N: 1, Ms: []float64{0.1}}, &Distribution{N: 1, Ms: []float64{9}}
	a := &Figures{LatencyP99Ms: 9, LatencyDist: slow, LoadPerSec: 1900, LoadLatencyDist: slow}
	b := &Figures{LatencyP99Ms: 1, LatencyDist: fast, LoadPerSec: 2000, LoadLatencyDist: fast}
	got := best(a, b)
	if got.LatencyDist != fast || got.LoadLatencyDist != fast {
		t.Errorf("best kept the distributions of the slower round")
	}
}

func TestLabel(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want string
	}{{0, "0"}, {0.25, "0.25"}, {1, "1"}, {250, "250"}, {1500, "1.5k"}, {40000, "40k"}, {36520, "36.5k"}, {2.5e6, "2.5M"}} {
		if got := label(c.v); got != c.want {
			t.Errorf("label(%g) = %q, want %q", c.v, got, c.want)
		}
	}
}

func TestLogAxis(t *testing.T) {
	for _, c := range []struct {
		vals   []float64
		lo, hi float64
		ticks  []float64
	}{
		{[]float64{0.09, 170}, 0.05, 200, []float64{0.1, 1, 10, 100}},
		{[]float64{0.25, 3}, 0.2, 5, []float64{0.2, 0.5, 1, 2, 5}},
		{[]float64{1, 10}, 1, 10, []float64{1, 2, 5, 10}},
		{[]float64{0, -1, 4}, 2, 10, []float64{2, 5, 10}},
	} {
		a, ticks := newAxis(c.vals, true, false, nil)
		if !near(a.lo, c.lo) || !near(a.hi, c.hi) || len(ticks) != len(c.ticks) {
			t.Errorf("%v: got axis %g to %g, ticks %v; want %g to %g, ticks %v", c.vals, a.lo, a.hi, ticks, c.lo, c.hi, c.ticks)
			continue
		}
		for i := range ticks {
			if !near(ticks[i], c.ticks[i]) {
				t.Errorf("%v: got ticks %v, want %v", c.vals, ticks, c.ticks)
			}
		}
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b)) }

// TestCharts draws the generic charts as another figure would: many
// series, a missing value.
func TestCharts(t *testing.T) {
	line := LineChart{Title: "Payload sizes", XLabel: "W", YLabel: "tasks/s", LogX: true, YZero: true}
	var names []string
	for _, mode := range []string{"forq", "JetStream"} {
		for _, size := range []string{"64 B", "4 KiB", "256 KiB", "1 MiB"} {
			s := Series{Name: mode + ", " + size, Dashed: mode != "forq"}
			for w := 1.0; w <= 8; w *= 2 {
				s.Points = append(s.Points, Point{w, 1000 * w})
			}
			line.Series = append(line.Series, s)
			names = append(names, s.Name)
		}
	}
	bar := BarChart{Title: "Queues", Unit: "tasks/s", Series: []string{"forq", "JetStream", "other"}, Groups: []BarGroup{
		{Label: "1 queue", Values: []float64{10, 12, 11}, Note: "0.83"},
		{Label: "100 queues", Values: []float64{8, math.NaN()}},
	}}
	for _, c := range []struct {
		name   string
		svg    string
		series []string
		bars   int
	}{
		{"line", line.SVG(), names, 0},
		{"bar", bar.SVG(), bar.Series, 4},
		{"empty line", LineChart{}.SVG(), nil, 0},
		{"empty bar", BarChart{}.SVG(), nil, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			svgs, _ := parseHTML(t, c.svg)
			if len(svgs) != 1 || !slices.Equal(svgs[0].Series, c.series) {
				t.Fatalf("got %+v, want one svg with series %q", svgs, c.series)
			}
			if n := strings.Count(c.svg, "<rect x="); n != c.bars+1 { // and the frame
				t.Errorf("got %d bars, want %d", n-1, c.bars)
			}
			for _, bad := range []string{"NaN", "Inf"} {
				if strings.Contains(c.svg, bad) {
					t.Errorf("the SVG holds %s", bad)
				}
			}
		})
	}
	// The legend of eight series wraps, and the plot starts under it.
	_, ys, height := legendPlaces(names, 720)
	if ys[0] == ys[len(ys)-1] || height <= legendRow {
		t.Errorf("the legend did not wrap: rows at %v", ys)
	}
}
