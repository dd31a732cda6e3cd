// Package ui is forq's web dashboard ("forq ui", "forq run --ui"): a JSON
// API over admin.Inspector and the results bucket, and one page (HTML, JS
// and CSS embedded in the binary, nothing fetched from elsewhere) that shows
// the queues, workers, a task, dead letters and schedules, and pauses and
// resumes queues, retries and purges dead letters, and runs schedules now
// or removes them.
//
// Security: GET never changes anything. An action is a POST that must come
// from the page itself: its Origin (or Sec-Fetch-Site) says same origin and
// it carries the per-process CSRF token the page holds in the
// X-Forq-CSRF header. Without a token (Config.Token) the dashboard answers
// only requests whose Host is a loopback name, against DNS rebinding, and
// Listen refuses an address beyond loopback. With a token, every request
// presents it: as "Authorization: Bearer TOKEN", or as the HttpOnly,
// SameSite=Strict cookie that opening the page once with ?token=TOKEN sets.
package ui

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

//go:embed assets
var assets embed.FS

// cookieName is the cookie that holds the token in the browser.
const cookieName = "forq_ui_token"

// csrfHeader is the header by which the page's script sends the CSRF token.
const csrfHeader = "X-Forq-CSRF"

// Config configures a dashboard.
type Config struct {
	// Inspector answers the API; required.
	Inspector *admin.Inspector
	// Results reads a task's record; nil shows none (see NewResults).
	Results *Results
	// Token, when set, is required of every request (bearer header, or the
	// cookie that ?token= sets); required to listen beyond loopback.
	Token string
	// Log receives the errors of the API; nil discards them.
	Log *slog.Logger
	// Conn, if set, lets the dashboard enqueue a schedule's task now: it
	// opens a producer on it at the first such request (declaring forq's
	// streams if they are missing, as every producer does). Nil hides
	// "Run now".
	Conn *nats.Conn
}

// Server is the dashboard's HTTP handler.
type Server struct {
	cfg   Config
	csrf  string
	mux   *http.ServeMux
	index *template.Template

	mu       sync.Mutex
	producer *producer.Producer
}

// New returns the dashboard of cfg, with a fresh CSRF token.
func New(cfg Config) (*Server, error) {
	if cfg.Inspector == nil {
		return nil, errors.New("ui: no inspector")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	idx, err := template.ParseFS(assets, "assets/index.html")
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, csrf: hex.EncodeToString(b), mux: http.NewServeMux(), index: idx}
	s.routes()
	return s, nil
}

// ServeHTTP authenticates the request, refuses cross-site actions, and
// serves it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-store")
	if s.cfg.Token == "" && !loopbackHost(r.Host) {
		http.Error(w, "forbidden: this dashboard answers only on a loopback host name (start it with --ui-token to serve other names)", http.StatusForbidden)
		return
	}
	if s.cfg.Token != "" && !s.authenticate(w, r) {
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodPost:
		if err := s.sameOrigin(r); err != nil {
			http.Error(w, "forbidden: "+err.Error(), http.StatusForbidden)
			return
		}
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// authenticate checks the token: bearer, cookie, or ?token= (which sets
// the cookie and redirects to the same page without it). It answers the
// request itself when it returns false or redirects.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) bool {
	if q := r.URL.Query().Get("token"); q != "" && r.Method == http.MethodGet {
		if !equal(q, s.cfg.Token) {
			http.Error(w, "unauthorized: wrong token", http.StatusUnauthorized)
			return false
		}
		http.SetCookie(w, &http.Cookie{Name: cookieName, Value: s.cfg.Token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
		u := *r.URL
		q := u.Query()
		q.Del("token")
		u.RawQuery = q.Encode()
		http.Redirect(w, r, u.RequestURI(), http.StatusSeeOther)
		return false
	}
	if a := r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") && equal(strings.TrimPrefix(a, "Bearer "), s.cfg.Token) {
		return true
	}
	if c, err := r.Cookie(cookieName); err == nil && equal(c.Value, s.cfg.Token) {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="forq"`)
	http.Error(w, "unauthorized: open this dashboard once as /?token=TOKEN (the --ui-token it was started with), or send Authorization: Bearer TOKEN", http.StatusUnauthorized)
	return false
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// sameOrigin refuses a POST that does not come from the dashboard's page.
func (s *Server) sameOrigin(r *http.Request) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return fmt.Errorf("a cross-site request (Sec-Fetch-Site: %s)", site)
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return errors.New("no Origin header")
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host != r.Host {
		return fmt.Errorf("a cross-origin request (Origin %q, host %q)", origin, r.Host)
	}
	if !equal(r.Header.Get(csrfHeader), s.csrf) {
		return errors.New("missing or wrong " + csrfHeader + " header (reload the page)")
	}
	return nil
}

// loopbackHost reports whether the Host header names this machine by a
// loopback name: localhost or a loopback address.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// CheckAddr refuses to serve addr beyond loopback without a token: an
// address on every interface (":8480", "0.0.0.0:8480") or on another one
// needs it.
func CheckAddr(addr, token string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--ui-addr %q: %w", addr, err)
	}
	if token != "" || loopbackHost(host) && host != "" {
		return nil
	}
	return fmt.Errorf("--ui-addr %s: beyond loopback the dashboard needs a token (--ui-token or FORQ_UI_TOKEN)", addr)
}

// Serve serves the dashboard on ln until ctx ends, then shuts it down
// (waiting up to 5 s for requests under way).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx) // the listener is closed either way
	<-done
	return nil
}

func (s *Server) routes() {
	static, _ := fs.Sub(assets, "assets")
	files := http.FileServerFS(static)
	s.mux.Handle("GET /static/", http.StripPrefix("/static/", files))
	s.mux.HandleFunc("GET /{$}", s.page)
	s.mux.HandleFunc("GET /api/stats", s.stats)
	s.mux.HandleFunc("GET /api/tasks", s.tasks)
	s.mux.HandleFunc("GET /api/task", s.task)
	s.mux.HandleFunc("GET /api/dead", s.dead)
	s.mux.HandleFunc("GET /api/schedules", s.schedules)
	s.mux.HandleFunc("POST /api/pause", s.pause)
	s.mux.HandleFunc("POST /api/resume", s.resume)
	s.mux.HandleFunc("POST /api/dead/retry", s.retryDead)
	s.mux.HandleFunc("POST /api/dead/purge", s.purgeDead)
	s.mux.HandleFunc("POST /api/schedules/remove", s.removeSchedule)
	s.mux.HandleFunc("POST /api/schedules/run", s.runSchedule)
}

func (s *Server) page(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := s.index.Execute(w, map[string]any{"CSRF": s.csrf, "RunNow": s.cfg.Conn != nil}); err != nil {
		s.cfg.Log.Warn("ui: page", "err", err)
	}
}

// enqueue enqueues t with the dashboard's producer, opened on the first
// call, and returns its ID.
func (s *Server) enqueue(ctx context.Context, t forq.Task) (string, error) {
	if s.cfg.Conn == nil {
		return "", fmt.Errorf("this dashboard enqueues nothing: %w", errBadRequest)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.producer == nil {
		p, err := producer.New(ctx, s.cfg.Conn, producer.Config{})
		if err != nil {
			return "", err
		}
		s.producer = p
	}
	info, err := s.producer.Enqueue(ctx, t)
	if err != nil {
		return "", err
	}
	return info.ID, nil
}

// writeJSON answers v as JSON.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // a client gone is not ours to report
}

// apiError answers err as {"error": "..."} with a status that fits it.
func (s *Server) apiError(w http.ResponseWriter, r *http.Request, err error) {
	code := statusOf(err)
	if code >= 500 {
		s.cfg.Log.Warn("ui: request failed", "path", r.URL.Path, "err", err)
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
