package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

const chromiumInstall = "apt-get install chromium (Debian's package)"

// chromium returns the path of Debian's chromium, or skips the test when
// it is not installed and this is not CI (which must install it: the test
// fails there).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("chromium is not installed; install it with: %s", chromiumInstall)
	}
	t.Skipf("chromium is not installed (%s): the dashboard's browser test is skipped", chromiumInstall)
	return ""
}

// page is the browser's log of what a page did: its JavaScript errors
// and the URLs it requested.
type page struct {
	mu       sync.Mutex
	errors   []string
	requests []string
}

// handle is the tab's listener (chromedp.WithListener): it runs on the
// loop that reads the tab's messages, so it only records.
func (p *page) handle(ev any) {
	{
		p.mu.Lock()
		defer p.mu.Unlock()
		switch e := ev.(type) {
		case *runtime.EventExceptionThrown:
			d := e.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			p.errors = append(p.errors, fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber, msg))
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError || e.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range e.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				p.errors = append(p.errors, "console.error: "+strings.Join(args, " "))
			}
		case *log.EventEntryAdded:
			if e.Entry.Level == log.EntryLevelError {
				p.errors = append(p.errors, "log: "+e.Entry.Text+" "+e.Entry.URL)
			}
		case *network.EventRequestWillBeSent:
			p.requests = append(p.requests, e.Request.URL)
		}
	}
}

// The dashboard of "forq run --ui" in a real headless Chromium: it shows
// the queued count fall and a chart move while the workers drain tasks,
// opens a task, retries a dead task that then succeeds, pauses and resumes
// a queue, with no JavaScript error and no request beyond its own origin.
func TestDashboardInBrowser(t *testing.T) {
	chrome := chromium(t)
	began := time.Now()
	dir := t.TempDir()
	forq := start(t, "forq", nil, "run", "--port", "0", "--data-dir", filepath.Join(dir, "data"), "-n", "2",
		"--allow-exec", "--retry-base", "50ms", "--ui", "--ui-addr", "127.0.0.1:0")
	var base, natsURL string
	eventually(t, 20*time.Second, func() bool {
		s := forq.stderr()
		if m := regexp.MustCompile(`dashboard at (http://127\.0\.0\.1:\d+)/`).FindStringSubmatch(s); m != nil {
			base = m[1]
		}
		if m := regexp.MustCompile(`broker at (nats://\S+),`).FindStringSubmatch(s); m != nil {
			natsURL = m[1]
		}
		return base != "" && natsURL != "" && strings.Contains(s, "worker started")
	}, "forq run --ui never said where its dashboard and broker are:\n%s", forq.stderr())
	env := []string{"FORQ_URL=" + natsURL}

	// A task that dies (its file is missing), and is fixed later.
	marker := filepath.Join(dir, "fixed")
	dead := enqueueExec(t, env, []string{"--max-attempts", "1"}, "sh", "-c", `test -f "$0" || { echo "no $0" >&2; exit 3; }`, marker)
	eventually(t, 20*time.Second, func() bool { return len(deadLetters(t, env)) == 1 }, "task %s never dead-lettered", dead)

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.UserDataDir(filepath.Join(dir, "chromium")),
		chromedp.WindowSize(1280, 900), chromedp.Flag("disable-gpu", true))...)
	defer cancelAlloc() // kills the browser and waits for it
	var pg page
	ctx, cancel := chromedp.NewContext(alloc, chromedp.WithListener(pg.handle))
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 90*time.Second)
	defer cancelT()
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/#queues"),
		chromedp.WaitVisible(chromedp.CSS(`#queues tr[data-queue="default"]`))); err != nil {
		t.Fatalf("load the dashboard: %v", err)
	}
	loaded := time.Since(began)

	watchDrain(t, ctx, env, dir)
	retryFromPage(t, ctx, env, dead, marker)
	pauseFromPage(t, ctx, env)
	otherPages(t, ctx, env)
	screenshot(t, ctx, dir)
	reqs := pg.check(t, base)
	cancel()
	cancelAlloc()
	for _, c := range children(os.Getpid()) {
		if strings.Contains(c, "chrom") {
			t.Errorf("the browser's process %s still runs after the test closed it", c)
		}
	}
	figuref(t, "dashboard browser test: %s in all, page loaded %s after start, %d requests, all to %s", time.Since(began).Round(time.Millisecond), loaded.Round(time.Millisecond), reqs, base)
}

// watchDrain enqueues 40 short tasks and watches the page's queued count
// rise and fall back to 0, and its charts move.
func watchDrain(t *testing.T, ctx context.Context, env []string, dir string) {
	t.Helper()
	lines := strings.Repeat("300ms\n", 40)
	if err := os.WriteFile(filepath.Join(dir, "sleeps"), []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := run(t, nil, env, "enqueue", "sleep", "--file", filepath.Join(dir, "sleeps"), "--lines"); code != 0 {
		t.Fatalf("enqueue: exit %d: %s", code, errs)
	}
	seen := map[int]bool{}
	peak, chartMoved, chartRate, chartFailed := 0, false, false, false
	var firstD string
	waitFor(t, ctx, 30*time.Second, "the queued count to rise and fall to 0 and the charts to move", func() bool {
		q := text(t, ctx, `#queues tr[data-queue="default"] td.queued`)
		d := eval[string](t, ctx, `(document.querySelector("#chart-queued path.line")||{getAttribute(){return ""}}).getAttribute("d")`)
		done := eval[string](t, ctx, `(document.querySelector("#chart-done path.line")||{getAttribute(){return ""}}).getAttribute("d")`)
		n, err := strconv.Atoi(strings.ReplaceAll(q, ",", ""))
		if err != nil {
			t.Fatalf("queued cell %q: %v", q, err) // the row is there: the page never removes a queue
		}
		seen[n] = true
		peak = maxInt(peak, n)
		if firstD == "" {
			firstD = d
		} else if d != firstD {
			chartMoved = true
		}
		chartRate = chartRate || aboveBaseline(done)
		// The dead task failed less than a minute ago.
		chartFailed = chartFailed || aboveBaseline(eval[string](t, ctx, `(document.querySelector("#chart-failed path.line")||{getAttribute(){return ""}}).getAttribute("d")`))
		return peak > 0 && n == 0 && chartMoved && chartRate
	})
	if !chartFailed {
		t.Error("the failures' chart never showed the dead task's failed attempt")
	}
	if len(seen) < 3 {
		t.Errorf("the queued count took only the values %v while 40 tasks drained: want it seen falling", seen)
	}

}

// retryFromPage opens dead task id from the dead letters' page, fixes it
// (creates marker) and retries it from the page.
func retryFromPage(t *testing.T, ctx context.Context, env []string, dead, marker string) {
	t.Helper()
	link := chromedp.CSS(fmt.Sprintf(`#dead tr[data-id=%q] a`, dead))
	must(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#tabs a[data-tab="dead"]`)),
		chromedp.WaitVisible(link), chromedp.Click(link), chromedp.WaitVisible(chromedp.CSS(`#task-state`))))
	waitText(t, ctx, `#task-state`, "dead")
	detail := text(t, ctx, `#task-detail`)
	if !strings.Contains(detail, "no "+marker) || !strings.Contains(detail, "dead-lettered after 1 attempts") {
		t.Errorf("the task's page does not show its error and timeline:\n%s", detail)
	}
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	must(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#task-detail button.retry`))))
	waitText(t, ctx, `#task-state`, "succeeded")
	if ds := deadLetters(t, env); len(ds) != 0 {
		t.Errorf("dead letters after the retry: %v", deadIDs(ds))
	}

}

// pauseFromPage pauses and resumes queue default from the page.
func pauseFromPage(t *testing.T, ctx context.Context, env []string) {
	t.Helper()
	row := `#queues tr[data-queue="default"] `
	must(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#tabs a[data-tab="queues"]`)),
		chromedp.WaitVisible(chromedp.CSS(row+"button.pause")), chromedp.Click(chromedp.CSS(row+"button.pause"))))
	waitText(t, ctx, row+"td.qstate", "paused")
	if !queuePaused(t, env) {
		t.Error("forq stats: queue default not paused after the page's Pause")
	}
	must(t, chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(row+"button.resume")), chromedp.Click(chromedp.CSS(row+"button.resume"))))
	waitText(t, ctx, row+"td.qstate", "active")
	if queuePaused(t, env) {
		t.Error("forq stats: queue default still paused after the page's Resume")
	}

}

// otherPages shows the workers and the schedules, and runs a schedule now
// from the page.
func otherPages(t *testing.T, ctx context.Context, env []string) {
	t.Helper()
	must(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#tabs a[data-tab="workers"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#workers tr[data-pid]`))))
	if n := eval[int](t, ctx, `document.querySelectorAll("#workers tr[data-pid]").length`); n != 2 {
		t.Errorf("the workers' page lists %d workers, want 2", n)
	}
	if code, _, errs := run(t, nil, env, "schedule", "add", "ui-hourly", "--every", "1h", "--record", "--payload", "from the page", "echo"); code != 0 {
		t.Fatalf("forq schedule add: exit %d: %s", code, errs)
	}
	runNow := chromedp.CSS(`#schedules tr[data-name="ui-hourly"] button.run`)
	must(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#tabs a[data-tab="schedules"]`)),
		chromedp.WaitVisible(runNow), chromedp.Click(runNow)))
	var status string
	waitFor(t, ctx, 10*time.Second, "the page to say it enqueued the schedule's task", func() bool {
		status = text(t, ctx, "#status")
		return strings.HasPrefix(status, "enqueued ")
	})
	id := strings.Fields(status)[1]
	code, out, errs := run(t, nil, env, "result", id, "--wait", "--wait-timeout", "20s", "--json")
	if code != 0 || !strings.Contains(out, `"succeeded"`) {
		t.Errorf("forq result %s: exit %d: %s %s", id, code, out, errs)
	}
}

// screenshot saves the page's screenshot (to FORQ_UI_SCREENSHOT if set)
// and checks that it is not blank.
func screenshot(t *testing.T, ctx context.Context, dir string) {
	t.Helper()
	must(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#tabs a[data-tab="queues"]`)), chromedp.Sleep(1500*time.Millisecond)))
	shot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	must(t, err)
	file := filepath.Join(dir, "dashboard.png")
	if p := os.Getenv("FORQ_UI_SCREENSHOT"); p != "" {
		file = p
	}
	if err := os.WriteFile(file, shot, 0o600); err != nil {
		t.Fatal(err)
	}
	if n := colours(t, shot); n < 64 {
		t.Errorf("screenshot %s has %d distinct colours: blank?", file, n)
	}

}

// check fails the test if the page logged an error or requested a URL
// beyond base, and returns how many requests it made.
func (p *page) check(t *testing.T, base string) int {
	t.Helper()
	p.mu.Lock()
	errs, reqs := slices0(p.errors), slices0(p.requests)
	p.mu.Unlock()
	if len(errs) > 0 {
		t.Errorf("the page logged JavaScript errors:\n%s", strings.Join(errs, "\n"))
	}
	for _, u := range reqs {
		if !strings.HasPrefix(u, base+"/") && !strings.HasPrefix(u, "data:") {
			t.Errorf("the page requested %s, beyond its origin %s", u, base)
		}
	}
	if len(reqs) < 10 {
		t.Errorf("the browser saw only %d requests: is the network listener on?", len(reqs))
	}
	return len(reqs)
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	must(t, err)
	return v
}

// text is the text of the element sel selects, "" if there is none. It
// is read in one evaluation: the page redraws its tables every second, so
// a node found by one command may be gone by the next.
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	return eval[string](t, ctx, fmt.Sprintf(`(document.querySelector(%q)||{}).textContent||""`, sel))
}

func slices0(s []string) []string { return append([]string(nil), s...) }

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// aboveBaseline reports whether an SVG path of the charts (viewBox 400×120,
// baseline y 116) has a point above its baseline: a rate above 0.
func aboveBaseline(d string) bool {
	for _, pt := range regexp.MustCompile(`[ML]([\d.]+),([\d.]+)`).FindAllStringSubmatch(d, -1) {
		if y, err := strconv.ParseFloat(pt[2], 64); err == nil && y < 115 {
			return true
		}
	}
	return false
}

// waitFor polls cond every 200 ms until it holds, failing after d.
func waitFor(t *testing.T, ctx context.Context, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("waited %s for %s", d, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitText waits until the text of sel is want.
func waitText(t *testing.T, ctx context.Context, sel, want string) {
	t.Helper()
	var got string
	waitFor(t, ctx, 20*time.Second, fmt.Sprintf("%s to say %q (it says %q)", sel, want, got), func() bool {
		got = text(t, ctx, sel)
		return strings.TrimSpace(got) == want
	})
}

// queuePaused asks forq stats whether queue default is paused.
func queuePaused(t *testing.T, env []string) bool {
	t.Helper()
	code, out, errs := run(t, nil, env, "stats", "--json", "--queue", "default")
	if code != 0 {
		t.Fatalf("forq stats: exit %d: %s", code, errs)
	}
	var st struct {
		Queues []struct {
			Paused bool `json:"paused"`
		} `json:"queues"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Queues) != 1 {
		t.Fatalf("forq stats --json: %v %q", err, out)
	}
	return st.Queues[0].Paused
}

// colours counts the distinct colours of a PNG.
func colours(t *testing.T, b []byte) int {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	seen := map[[4]uint32]bool{}
	r := img.Bounds()
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			c0, c1, c2, c3 := img.At(x, y).RGBA()
			seen[[4]uint32{c0, c1, c2, c3}] = true
		}
	}
	return len(seen)
}

// "forq ui" on a broker of its own, with its token from FORQ_UI_TOKEN:
// a request without the token is refused, one with it answers the queues,
// and SIGTERM stops it with exit 0.
func TestUICommandWithToken(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	if code, _, errs := run(t, nil, env, "enqueue", "echo", "--queue", "uiq", "--payload", "x"); code != 0 {
		t.Fatalf("enqueue: exit %d: %s", code, errs)
	}
	ui := start(t, "forq", append(env, "FORQ_UI_TOKEN=s3cret", "FORQ_UI_ADDR=127.0.0.1:0"), "ui")
	var base string
	eventually(t, 20*time.Second, func() bool {
		m := regexp.MustCompile(`forq ui: dashboard at (http://127\.0\.0\.1:\d+)/ \(open it once as /\?token=`).FindStringSubmatch(ui.stderr())
		if m != nil {
			base = m[1]
		}
		return base != ""
	}, "forq ui never said where it serves:\n%s", ui.stderr())
	if strings.Contains(ui.stderr(), "s3cret") {
		t.Errorf("forq ui printed its token:\n%s", ui.stderr())
	}
	get := func(bearer string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, base+"/api/stats", nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(""); code != http.StatusUnauthorized {
		t.Errorf("GET /api/stats without the token: %d, want 401", code)
	}
	if code, _ := get("wrong"); code != http.StatusUnauthorized {
		t.Errorf("GET /api/stats with a wrong token: %d, want 401", code)
	}
	code, body := get("s3cret")
	if code != http.StatusOK || !strings.Contains(body, `"queue":"uiq"`) {
		t.Errorf("GET /api/stats with the token: %d %s, want the queue uiq", code, body)
	}
	ui.signal(syscall.SIGTERM)
	if code := ui.wait(10 * time.Second); code != 0 {
		t.Errorf("forq ui on SIGTERM: exit %d, want 0; stderr:\n%s", code, ui.stderr())
	}
}
