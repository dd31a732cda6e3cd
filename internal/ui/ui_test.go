package ui_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/ui"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

type fixture struct {
	nc      *nats.Conn
	in      *admin.Inspector
	p       *producer.Producer
	failing atomic.Bool
}

// setup starts a broker and a worker of queue "q" whose handler fails
// payload "fail" for good while f.failing holds.
func setup(t *testing.T) *fixture {
	t.Helper()
	s := testutil.Broker(t)
	f := &fixture{nc: testutil.Connect(t, s.ClientURL())}
	var err error
	if f.in, err = admin.New(t.Context(), f.nc, admin.Config{}); err != nil {
		t.Fatal(err)
	}
	if f.p, err = producer.New(t.Context(), f.nc, producer.Config{}); err != nil {
		t.Fatal(err)
	}
	f.failing.Store(true)
	w, err := consumer.New(t.Context(), f.nc, consumer.Config{Queues: []string{"q"}, Concurrency: 2, Restarts: 2,
		StatusInterval: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("t", consumer.HandlerFunc(func(_ context.Context, task *consumer.Task) ([]byte, error) {
		if string(task.Payload) == "fail" && f.failing.Load() {
			return nil, fmt.Errorf("refused <b>%s</b>: %w", task.Payload, consumer.ErrPermanent)
		}
		return []byte("done " + string(task.Payload)), nil
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
	return f
}

func (f *fixture) enqueue(t *testing.T, id, payload string) {
	t.Helper()
	if _, err := f.p.Enqueue(t.Context(), forq.Task{ID: id, Queue: "q", Type: "t", Payload: []byte(payload)}, producer.WithRecord()); err != nil {
		t.Fatal(err)
	}
}

// dashboard serves f's dashboard (with token, if not "") on a loopback
// test server.
func (f *fixture) dashboard(t *testing.T, token string) *httptest.Server {
	t.Helper()
	res, err := ui.NewResults(f.nc)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ui.New(ui.Config{Inspector: f.in, Results: res, Token: token, Conn: f.nc})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return hs
}

func get(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: %d %q: %v", url, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

// csrf reads the page's CSRF token.
func csrf(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`name="forq-csrf" content="([0-9a-f]+)"`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("GET /: no CSRF token in %q", b)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("GET /: Content-Security-Policy %q", csp)
	}
	return string(m[1])
}

func post(t *testing.T, url string, body string, hdr map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAPI(t *testing.T) {
	f := setup(t)
	hs := f.dashboard(t, "")
	f.enqueue(t, "ok-1", "hello")
	f.enqueue(t, "dead-1", "fail")
	if err := f.in.AddSchedule(t.Context(), admin.Schedule{Name: "hourly", Every: time.Hour, Task: forq.Task{Queue: "sq", Type: "t", Payload: []byte("tick")}}, false); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		var d ui.TaskDetail
		return get(t, hs.URL+"/api/task?id=dead-1", &d) == http.StatusOK && len(d.Dead) == 1
	}, "dead-1 never dead-lettered")

	t.Run("stats", func(t *testing.T) { testStats(t, f, hs) })
	t.Run("task", func(t *testing.T) { testTask(t, f, hs) })
	t.Run("lists", func(t *testing.T) { testLists(t, f, hs) })
	t.Run("GET never changes anything", func(t *testing.T) { testGetNeverMutates(t, f, hs) })
	t.Run("cross-site POST refused", func(t *testing.T) { testCrossSiteRefused(t, f, hs) })
	t.Run("actions", func(t *testing.T) { testActions(t, f, hs) })
}

func testStats(t *testing.T, f *fixture, hs *httptest.Server) {
	t.Helper()
	var st struct {
		Queues  []map[string]any `json:"queues"`
		Workers []struct {
			PID      int    `json:"pid"`
			Host     string `json:"host"`
			Restarts *int   `json:"restarts"`
		} `json:"workers"`
	}
	if code := get(t, hs.URL+"/api/stats", &st); code != http.StatusOK {
		t.Fatalf("GET /api/stats: %d", code)
	}
	var q map[string]any
	for _, x := range st.Queues {
		if x["queue"] == "q" {
			q = x
		}
	}
	for _, k := range []string{"queued", "running", "retrying", "scheduled", "dead", "paused", "processed_last_minute", "failed_last_minute"} {
		if _, ok := q[k]; !ok {
			t.Errorf("queue q: no %q in %v", k, q)
		}
	}
	if q["dead"] != float64(1) {
		t.Errorf("queue q: dead %v, want 1", q["dead"])
	}
	if len(st.Workers) != 1 || st.Workers[0].PID == 0 || st.Workers[0].Host == "" {
		t.Errorf("workers: %+v, want one with a pid and host", st.Workers)
	} else if r := st.Workers[0].Restarts; r == nil {
		t.Error("workers[0]: no restarts")
	} else if *r != 2 {
		t.Errorf("workers[0].restarts: %d, want 2 (its consumer.Config.Restarts)", *r)
	}
}

func testTask(t *testing.T, f *fixture, hs *httptest.Server) {
	t.Helper()
	var d ui.TaskDetail
	if code := get(t, hs.URL+"/api/task?id=dead-1", &d); code != http.StatusOK {
		t.Fatalf("GET /api/task: %d", code)
	}
	if d.Record == nil || d.Record.State != forq.StateDead || len(d.Record.History) != 1 || !strings.Contains(d.Record.History[0].Error, "refused <b>fail</b>") {
		t.Errorf("dead-1's record: %+v, want dead with one failed attempt", d.Record)
	}
	if d.Dead[0].Payload.Text != "fail" || d.Dead[0].Queue != "q" {
		t.Errorf("dead-1's letter: %+v", d.Dead[0])
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		return get(t, hs.URL+"/api/task?id=ok-1", &d) == http.StatusOK && d.Record.State == forq.StateSucceeded
	}, "ok-1 never succeeded")
	if string(d.Record.Result) != "done hello" {
		t.Errorf("ok-1's result %q", d.Record.Result)
	}
	// A task waiting in its queue: its payload comes from there.
	if _, err := f.p.Enqueue(t.Context(), forq.Task{ID: "held-1", Queue: "held", Type: "t", Payload: []byte(`{"n":1}`)}, producer.WithRecord()); err != nil {
		t.Fatal(err)
	}
	d = ui.TaskDetail{}
	if code := get(t, hs.URL+"/api/task?id=held-1", &d); code != http.StatusOK || d.Task == nil || d.Task.Payload.Text != `{"n":1}` || d.Task.State != admin.StateQueued {
		t.Errorf("GET /api/task?id=held-1: %d %+v, want its queued task with its payload", code, d.Task)
	}
	testTaskWithoutRecord(t, f, hs, d)
	var e map[string]any
	if code := get(t, hs.URL+"/api/task?id=nope", &e); code != http.StatusNotFound {
		t.Errorf("GET /api/task?id=nope: %d, want 404", code)
	}
}

// testTaskWithoutRecord: held-1, a recorded task no worker started, has
// no record (d is what the API said of it); one with a deadline has one.
func testTaskWithoutRecord(t *testing.T, f *fixture, hs *httptest.Server, d ui.TaskDetail) {
	t.Helper()
	// It has no record until a worker starts it: the dashboard says so.
	if d.Record != nil || !strings.Contains(d.RecordError, "no record yet") {
		t.Errorf("GET /api/task?id=held-1: record %+v, %q; want none yet, said so", d.Record, d.RecordError)
	}
	d = ui.TaskDetail{}
	if code := get(t, hs.URL+"/api/task?id=held-1&queue=held", &d); code != http.StatusOK || d.Task == nil || d.Task.Queue != "held" {
		t.Errorf("GET /api/task?id=held-1&queue=held: %d %+v, want its queued task", code, d.Task)
	}
	// A task with a deadline is recorded as queued at enqueue.
	if _, err := f.p.Enqueue(t.Context(), forq.Task{ID: "held-2", Queue: "held", Type: "t", Payload: []byte(`{"n":2}`)}, producer.WithRecord(), producer.WithExpiresIn(time.Hour)); err != nil {
		t.Fatal(err)
	}
	d = ui.TaskDetail{}
	if code := get(t, hs.URL+"/api/task?id=held-2", &d); code != http.StatusOK || d.Task == nil || d.Record == nil || d.Record.State != forq.StateQueued {
		t.Errorf("GET /api/task?id=held-2: %d %+v %+v, want its queued record and task", code, d.Record, d.Task)
	}
}

func testLists(t *testing.T, f *fixture, hs *httptest.Server) {
	t.Helper()
	var dead []ui.DeadView
	get(t, hs.URL+"/api/dead", &dead)
	if len(dead) != 1 || dead[0].ID != "dead-1" || dead[0].Headers["Forq-Error"] == nil {
		t.Errorf("GET /api/dead: %+v", dead)
	}
	var sch []map[string]any
	get(t, hs.URL+"/api/schedules", &sch)
	if len(sch) != 1 || sch[0]["name"] != "hourly" || sch[0]["spec"] != "@every 1h0m0s" || sch[0]["queue"] != "sq" {
		t.Errorf("GET /api/schedules: %v", sch)
	}
	var tasks []ui.TaskView
	if code := get(t, hs.URL+"/api/tasks?queue=q", &tasks); code != http.StatusOK {
		t.Errorf("GET /api/tasks?queue=q: %d", code)
	}
	var e map[string]string
	if code := get(t, hs.URL+"/api/tasks?queue=q&state=bogus", &e); code != http.StatusBadRequest || !strings.Contains(e["error"], "bogus") {
		t.Errorf("GET /api/tasks?state=bogus: %d %v, want 400 naming it", code, e)
	}
}

func testGetNeverMutates(t *testing.T, f *fixture, hs *httptest.Server) {
	t.Helper()
	for _, p := range []string{"/api/pause", "/api/resume", "/api/dead/retry", "/api/dead/purge", "/api/schedules/remove", "/api/schedules/run"} {
		url := hs.URL + p + "?queue=q&refs=dead-1&name=hourly"
		if code := get(t, url, nil); code != http.StatusMethodNotAllowed {
			t.Errorf("GET %s: %d, want 405", p, code)
		}
	}
	f.wantUnchanged(t)
}

func testCrossSiteRefused(t *testing.T, f *fixture, hs *httptest.Server) {
	t.Helper()
	tok := csrf(t, hs.URL)
	body := `{"queue":"q"}`
	for name, hdr := range map[string]map[string]string{
		"other origin":     {"Origin": "http://evil.example", "X-Forq-CSRF": tok},
		"cross-site fetch": {"Origin": hs.URL, "Sec-Fetch-Site": "cross-site", "X-Forq-CSRF": tok},
		"no origin":        {"X-Forq-CSRF": tok},
		"no CSRF token":    {"Origin": hs.URL},
		"wrong CSRF token": {"Origin": hs.URL, "X-Forq-CSRF": strings.Repeat("0", len(tok))},
		"rebound DNS name": {"Origin": "http://evil.example", "Host": "evil.example", "X-Forq-CSRF": tok},
	} {
		for _, p := range []string{"/api/pause", "/api/dead/purge", "/api/schedules/remove", "/api/schedules/run"} {
			b := body
			if p == "/api/dead/purge" {
				b = `{"refs":["dead-1"]}`
			}
			if strings.HasPrefix(p, "/api/schedules/") {
				b = `{"name":"hourly"}`
			}
			if code, msg := post(t, hs.URL+p, b, hdr); code != http.StatusForbidden {
				t.Errorf("%s: POST %s: %d %s, want 403", name, p, code, msg)
			}
		}
	}
	f.wantUnchanged(t)
}

func testActions(t *testing.T, f *fixture, hs *httptest.Server) {
	t.Helper()
	tok := csrf(t, hs.URL)
	hdr := map[string]string{"Origin": hs.URL, "Sec-Fetch-Site": "same-origin", "X-Forq-CSRF": tok}
	if code, msg := post(t, hs.URL+"/api/pause", `{"queue":"q"}`, hdr); code != http.StatusOK {
		t.Fatalf("pause: %d %s", code, msg)
	}
	if paused, _, _ := f.in.Paused(t.Context(), "q"); !paused {
		t.Error("q not paused after POST /api/pause")
	}
	if code, msg := post(t, hs.URL+"/api/resume", `{"queue":"q"}`, hdr); code != http.StatusOK {
		t.Fatalf("resume: %d %s", code, msg)
	}
	if paused, _, _ := f.in.Paused(t.Context(), "q"); paused {
		t.Error("q paused after POST /api/resume")
	}
	if code, msg := post(t, hs.URL+"/api/pause", `{"queue":"bad name!"}`, hdr); code != http.StatusBadRequest || !strings.Contains(msg, "bad name!") {
		t.Errorf("pause of a bad queue name: %d %s, want 400 naming it", code, msg)
	}
	if code, msg := post(t, hs.URL+"/api/dead/retry", `{"refs":["nope"]}`, hdr); code != http.StatusNotFound || !strings.Contains(msg, "nope") {
		t.Errorf("retry of no letter: %d %s, want 404 naming it", code, msg)
	}
	f.failing.Store(false)
	if code, msg := post(t, hs.URL+"/api/dead/retry", `{"refs":["dead-1"]}`, hdr); code != http.StatusOK {
		t.Fatalf("retry: %d %s", code, msg)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		var d ui.TaskDetail
		return get(t, hs.URL+"/api/task?id=dead-1", &d) == http.StatusOK && d.Record.State == forq.StateSucceeded && len(d.Dead) == 0
	}, "dead-1 never succeeded after its retry")
	code, msg := post(t, hs.URL+"/api/schedules/run", `{"name":"hourly"}`, hdr)
	var ran struct{ ID string }
	if err := json.Unmarshal([]byte(msg), &ran); code != http.StatusOK || err != nil || ran.ID == "" {
		t.Fatalf("run schedule now: %d %s", code, msg)
	}
	if list, err := f.in.Tasks(t.Context(), "sq"); err != nil || len(list) != 1 || list[0].ID != ran.ID || string(list[0].Preview) != "tick" {
		t.Errorf("queue sq after run now: %+v %v, want task %s", list, err, ran.ID)
	}
	if code, msg := post(t, hs.URL+"/api/schedules/run", `{"name":"nope"}`, hdr); code != http.StatusNotFound {
		t.Errorf("run of no schedule: %d %s, want 404", code, msg)
	}
	if code, msg := post(t, hs.URL+"/api/schedules/remove", `{"name":"hourly"}`, hdr); code != http.StatusOK {
		t.Fatalf("remove schedule: %d %s", code, msg)
	}
	if _, err := f.in.Schedule(t.Context(), "hourly"); err == nil {
		t.Error("schedule hourly still there after POST /api/schedules/remove")
	}
}

// wantUnchanged checks that the dead letter, the schedule and the queue's
// pause are as setup left them.
func (f *fixture) wantUnchanged(t *testing.T) {
	t.Helper()
	if l, err := f.in.FindDeadLetters(t.Context(), "q", []string{"dead-1"}); err != nil || len(l) != 1 {
		t.Errorf("dead-1's letter: %v %v, want it still there", l, err)
	}
	if _, err := f.in.Schedule(t.Context(), "hourly"); err != nil {
		t.Errorf("schedule hourly: %v, want it still there", err)
	}
	if paused, _, _ := f.in.Paused(t.Context(), "q"); paused {
		t.Error("q paused")
	}
	if list, _ := f.in.Tasks(t.Context(), "sq"); len(list) > 0 {
		t.Errorf("queue sq has tasks %+v: the schedule ran", list)
	}
}

// answer is what TestToken checks of a response.
type answer struct {
	StatusCode int
	header     http.Header
	cookies    []*http.Cookie
}

func TestToken(t *testing.T) {
	f := setup(t)
	hs := f.dashboard(t, "s3cret")
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(req *http.Request) answer {
		t.Helper()
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return answer{resp.StatusCode, resp.Header, resp.Cookies()}
	}
	req := func(path string) *http.Request {
		r, _ := http.NewRequest(http.MethodGet, hs.URL+path, nil)
		return r
	}
	for _, p := range []string{"/", "/api/stats", "/static/app.js"} {
		if resp := do(req(p)); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s without the token: %d, want 401", p, resp.StatusCode)
		}
	}
	if resp := do(req("/?token=wrong")); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /?token=wrong: %d, want 401", resp.StatusCode)
	}
	r := req("/api/stats")
	r.Header.Set("Authorization", "Bearer s3cret")
	if resp := do(r); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /api/stats with the bearer token: %d, want 200", resp.StatusCode)
	}
	resp := do(req("/?token=s3cret"))
	if resp.StatusCode != http.StatusSeeOther || resp.header.Get("Location") != "/" {
		t.Fatalf("GET /?token=s3cret: %d to %q, want 303 to /", resp.StatusCode, resp.header.Get("Location"))
	}
	cookies := resp.cookies
	if len(cookies) != 1 || !cookies[0].HttpOnly || cookies[0].SameSite != http.SameSiteStrictMode {
		t.Fatalf("GET /?token=s3cret: cookies %+v, want one HttpOnly SameSite=Strict", cookies)
	}
	r = req("/api/stats")
	r.AddCookie(cookies[0])
	if resp := do(r); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /api/stats with the cookie: %d, want 200", resp.StatusCode)
	}

	// Without a token, only loopback host names are answered.
	open := f.dashboard(t, "")
	r, _ = http.NewRequest(http.MethodGet, open.URL+"/api/stats", nil)
	r.Host = "dashboard.example:8474"
	if resp := do(r); resp.StatusCode != http.StatusForbidden {
		t.Errorf("GET with Host dashboard.example, no token: %d, want 403", resp.StatusCode)
	}
}

func TestCheckAddr(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:8474": true, "[::1]:0": true, "localhost:0": true, "127.0.0.2:1": true,
		":8474": false, "0.0.0.0:8474": false, "[::]:1": false, "192.0.2.1:80": false, "example.com:80": false,
	} {
		err := ui.CheckAddr(addr, "")
		if (err == nil) != ok {
			t.Errorf("CheckAddr(%q, no token): %v, want ok %v", addr, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--ui-token") {
			t.Errorf("CheckAddr(%q): %v does not say what to do", addr, err)
		}
		if err := ui.CheckAddr(addr, "tok"); err != nil {
			t.Errorf("CheckAddr(%q, a token): %v", addr, err)
		}
	}
	if err := ui.CheckAddr("nonsense", "tok"); err == nil {
		t.Error("CheckAddr(nonsense): no error")
	}
}
