package ui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/internal/record"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PreviewBytes is how much of a payload the API shows: a preview, not the
// payload (forq dead show prints a dead letter's whole payload).
const PreviewBytes = 4096

// maxDead is how many dead letters the API lists at most (the newest).
const maxDead = 500

// Results reads tasks' records in forq.BucketResults, as "forq result"
// does, without creating the bucket when it is missing.
type Results struct {
	js jetstream.JetStream
}

// NewResults returns the reader of the records on nc.
func NewResults(nc *nats.Conn) (*Results, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return &Results{js: js}, nil
}

// Get returns task id's record; the error wraps forq.ErrResultNotFound when
// it has none.
func (r *Results) Get(ctx context.Context, id string) (*forq.Result, error) {
	kv, err := r.js.KeyValue(ctx, forq.BucketResults)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("result %s: %w", id, forq.ErrResultNotFound)
	}
	if err != nil {
		return nil, err
	}
	res, _, err := record.New(kv).Get(ctx, id)
	switch {
	case err != nil:
		return nil, err
	case res == nil:
		return nil, fmt.Errorf("result %s: %w", id, forq.ErrResultNotFound)
	}
	record.View(res, time.Now())
	return res, nil
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, forq.ErrInvalidOption), errors.Is(err, errBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, admin.ErrNoQueue), errors.Is(err, admin.ErrDeadLetterNotFound),
		errors.Is(err, admin.ErrScheduleNotFound), errors.Is(err, forq.ErrResultNotFound):
		return http.StatusNotFound
	}
	return http.StatusBadGateway // the broker's answer, or its silence
}

var errBadRequest = errors.New("bad request")

// Preview is a bounded view of a payload.
type Preview struct {
	// Text is the payload's first bytes as text (invalid UTF-8 replaced).
	Text string `json:"text"`
	// Size is the whole payload's size in bytes.
	Size int `json:"size"`
	// Truncated is whether Text is only the start.
	Truncated bool `json:"truncated"`
	// Binary is whether the bytes shown are not valid UTF-8.
	Binary bool `json:"binary"`
}

func preview(b []byte, size int) Preview {
	p := Preview{Size: size, Truncated: len(b) < size}
	if len(b) > PreviewBytes {
		b, p.Truncated = b[:PreviewBytes], true
	}
	if p.Truncated {
		for len(b) > 0 && !utf8.Valid(b) && len(b) > PreviewBytes-4 { // a rune cut by the limit
			b = b[:len(b)-1]
		}
	}
	p.Binary = !utf8.Valid(b)
	p.Text = strings.ToValidUTF8(string(b), "\uFFFD")
	return p
}

// TaskView is a task of a queue's list, as the API shows it.
type TaskView struct {
	ID       string            `json:"id"`
	Queue    string            `json:"queue"`
	Type     string            `json:"type"`
	State    admin.TaskState   `json:"state"`
	Priority string            `json:"priority"`
	Seq      uint64            `json:"seq"`
	Enqueued time.Time         `json:"enqueued,omitzero"`
	Due      time.Time         `json:"due,omitzero"`
	Attempts int               `json:"attempts"`
	Payload  Preview           `json:"payload"`
	Worker   *admin.TaskWorker `json:"worker,omitempty"`
	Record   *forq.Result      `json:"record,omitempty"`
}

func taskView(t admin.TaskInfo) TaskView {
	return TaskView{ID: t.ID, Queue: t.Queue, Type: t.Type, State: t.State, Priority: t.Priority.String(),
		Seq: t.Seq, Enqueued: t.Enqueued, Due: t.Due, Attempts: t.Attempts,
		Payload: preview(t.Preview, t.Size), Worker: t.Worker, Record: t.Record}
}

// DeadView is a dead letter as the API shows it.
type DeadView struct {
	Seq      uint64              `json:"seq"`
	ID       string              `json:"id"`
	Queue    string              `json:"queue"`
	Type     string              `json:"type"`
	Attempts int                 `json:"attempts"`
	Error    string              `json:"error"`
	Time     time.Time           `json:"time"`
	Headers  map[string][]string `json:"headers"`
	Payload  Preview             `json:"payload"`
}

func deadView(d admin.DeadLetter) DeadView {
	return DeadView{Seq: d.Seq, ID: d.ID, Queue: d.Queue, Type: d.Type, Attempts: d.Attempts, Error: d.Error,
		Time: d.Time, Headers: d.Header, Payload: preview(d.Payload, len(d.Payload))}
}

// TaskDetail is what the API knows of a task by ID: its record, and its
// dead letters.
type TaskDetail struct {
	ID     string       `json:"id"`
	Record *forq.Result `json:"record"`
	// RecordError says why there is no record.
	RecordError string     `json:"record_error,omitempty"`
	Dead        []DeadView `json:"dead"`
	// Task is the task as its queue holds it (with its payload), for a
	// task that has a record not final yet, or no record and no dead
	// letter (a recorded task no worker started yet: looked for in the
	// query's queue, or in the first queues that hold tasks), and is
	// among the first taskSearch tasks of its queue; nil otherwise.
	Task *TaskView `json:"task"`
}

// taskSearch bounds how many tasks of its queue the API reads to find a
// task by ID (a round trip each).
const taskSearch = 100

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	st, err := s.cfg.Inspector.Stats(r.Context())
	if err != nil {
		s.apiError(w, r, err)
		return
	}
	if st.Queues == nil {
		st.Queues = []admin.QueueStats{}
	}
	if st.Workers == nil {
		st.Workers = []admin.WorkerStats{}
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) tasks(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	opts := []admin.ListOption{admin.WithPreview(PreviewBytes)}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			s.apiError(w, r, fmt.Errorf("limit %q: %w", v, errBadRequest))
			return
		}
		opts = append(opts, admin.WithLimit(n))
	}
	if v := q.Get("state"); v != "" {
		var states []admin.TaskState
		for f := range strings.SplitSeq(v, ",") {
			st, err := admin.ParseTaskState(f)
			if err != nil {
				s.apiError(w, r, err)
				return
			}
			states = append(states, st)
		}
		opts = append(opts, admin.WithState(states...))
	}
	if v := q.Get("type"); v != "" {
		opts = append(opts, admin.WithType(strings.Split(v, ",")...))
	}
	list, err := s.cfg.Inspector.Tasks(r.Context(), q.Get("queue"), opts...)
	if err != nil {
		s.apiError(w, r, err)
		return
	}
	out := make([]TaskView, 0, len(list))
	for _, t := range list {
		out = append(out, taskView(t))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) task(w http.ResponseWriter, r *http.Request) {
	id := strings.TrimSpace(r.URL.Query().Get("id"))
	if id == "" {
		s.apiError(w, r, fmt.Errorf("no task id: %w", errBadRequest))
		return
	}
	d := TaskDetail{ID: id, Dead: []DeadView{}}
	if s.cfg.Results == nil {
		d.RecordError = "this dashboard reads no records"
	} else if res, err := s.cfg.Results.Get(r.Context(), id); err == nil {
		d.Record = res
	} else if errors.Is(err, forq.ErrResultNotFound) {
		d.RecordError = "no record: a task enqueued with --record (without a delay or a deadline) has none until a worker starts it; or it did not ask for one, its record expired, or there is no such task"
	} else {
		s.apiError(w, r, err)
		return
	}
	letters, err := s.cfg.Inspector.FindDeadLetters(r.Context(), "", []string{id})
	if err != nil && !errors.Is(err, admin.ErrDeadLetterNotFound) {
		s.apiError(w, r, err)
		return
	}
	for _, l := range letters {
		if l.ID == id { // not a letter whose sequence number is this ID
			d.Dead = append(d.Dead, deadView(l))
		}
	}
	switch {
	case d.Record != nil && !d.Record.State.Final():
		d.Task = s.findTask(r.Context(), d.Record.Queue, id)
	case d.Record == nil && len(d.Dead) == 0:
		// A recorded task not started yet has no record to name its
		// queue (producer.WithRecord): look in the queues.
		if d.Task = s.findQueued(r.Context(), r.URL.Query().Get("queue"), id); d.Task != nil && d.RecordError != "" {
			d.RecordError = "no record yet: a task enqueued with --record is recorded when a worker starts it"
		}
	}
	if d.Record == nil && len(d.Dead) == 0 && d.Task == nil {
		writeJSON(w, http.StatusNotFound, d)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// searchQueues bounds how many queues findQueued looks in.
const searchQueues = 8

// findQueued looks for task id, which has no record, in queue, or when
// queue is "" in the first searchQueues queues that hold tasks (each up to
// taskSearch tasks).
func (s *Server) findQueued(ctx context.Context, queue, id string) *TaskView {
	if queue != "" {
		return s.findTask(ctx, queue, id)
	}
	st, err := s.cfg.Inspector.Stats(ctx)
	if err != nil {
		return nil
	}
	n := 0
	for _, q := range st.Queues {
		if q.Queued+q.Scheduled+uint64(q.Unacked) == 0 {
			continue
		}
		if t := s.findTask(ctx, q.Queue, id); t != nil {
			return t
		}
		if n++; n == searchQueues {
			break
		}
	}
	return nil
}

// findTask looks for task id among the first taskSearch tasks of queue.
func (s *Server) findTask(ctx context.Context, queue, id string) *TaskView {
	list, err := s.cfg.Inspector.Tasks(ctx, queue, admin.WithLimit(taskSearch), admin.WithPreview(PreviewBytes))
	if err != nil {
		return nil // a queue gone, or the broker: the record is shown anyway
	}
	for _, t := range list {
		if t.ID == id {
			v := taskView(t)
			return &v
		}
	}
	return nil
}

func (s *Server) dead(w http.ResponseWriter, r *http.Request) {
	list, err := s.cfg.Inspector.DeadLetters(r.Context(), r.URL.Query().Get("queue"))
	if err != nil {
		s.apiError(w, r, err)
		return
	}
	if len(list) > maxDead {
		list = list[len(list)-maxDead:]
	}
	out := make([]DeadView, 0, len(list))
	for i := len(list) - 1; i >= 0; i-- { // newest first
		out = append(out, deadView(list[i]))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) schedules(w http.ResponseWriter, r *http.Request) {
	list, err := s.cfg.Inspector.Schedules(r.Context())
	if err != nil {
		s.apiError(w, r, err)
		return
	}
	type view struct {
		Name     string    `json:"name"`
		Spec     string    `json:"spec"`
		TimeZone string    `json:"time_zone,omitempty"`
		Queue    string    `json:"queue"`
		Type     string    `json:"type"`
		Payload  Preview   `json:"payload"`
		Created  time.Time `json:"created,omitzero"`
	}
	out := make([]view, 0, len(list))
	for _, sc := range list {
		out = append(out, view{Name: sc.Name, Spec: sc.Spec(), TimeZone: sc.TimeZone, Queue: sc.Task.Queue,
			Type: sc.Task.Type, Payload: preview(sc.Task.Payload, len(sc.Task.Payload)), Created: sc.Created})
	}
	writeJSON(w, http.StatusOK, out)
}

// action is the body of a POST.
type action struct {
	Queue string   `json:"queue"`
	Refs  []string `json:"refs"`
	Name  string   `json:"name"`
}

func readAction(r *http.Request) (action, error) {
	var a action
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return a, fmt.Errorf("body: %v: %w", err, errBadRequest)
	}
	return a, nil
}

func (s *Server) pause(w http.ResponseWriter, r *http.Request) {
	a, err := readAction(r)
	if err == nil {
		_, err = s.cfg.Inspector.Pause(r.Context(), a.Queue, admin.PauseForever, 0)
	}
	if err != nil {
		s.apiError(w, r, err)
		return
	}
	s.cfg.Log.Info("ui: queue paused", "queue", a.Queue)
	writeJSON(w, http.StatusOK, map[string]any{"queue": a.Queue, "paused": true})
}

func (s *Server) resume(w http.ResponseWriter, r *http.Request) {
	a, err := readAction(r)
	if err == nil {
		err = s.cfg.Inspector.Resume(r.Context(), a.Queue)
	}
	if err != nil {
		s.apiError(w, r, err)
		return
	}
	s.cfg.Log.Info("ui: queue resumed", "queue", a.Queue)
	writeJSON(w, http.StatusOK, map[string]any{"queue": a.Queue, "paused": false})
}

// letters resolves a POST's refs (task IDs or sequence numbers) among the
// dead letters of its queue ("" for all).
func (s *Server) letters(r *http.Request) ([]admin.DeadLetter, error) {
	a, err := readAction(r)
	if err != nil {
		return nil, err
	}
	if len(a.Refs) == 0 {
		return nil, fmt.Errorf("no dead letter named (refs): %w", errBadRequest)
	}
	return s.cfg.Inspector.FindDeadLetters(r.Context(), a.Queue, a.Refs)
}

func (s *Server) retryDead(w http.ResponseWriter, r *http.Request) {
	list, err := s.letters(r)
	if err != nil {
		s.apiError(w, r, err)
		return
	}
	var ids []string
	for _, d := range list {
		if _, err := s.cfg.Inspector.RetryDead(r.Context(), d); err != nil {
			s.apiError(w, r, fmt.Errorf("retry %s (seq %d): %w", d.ID, d.Seq, err))
			return
		}
		ids = append(ids, d.ID)
	}
	s.cfg.Log.Info("ui: dead letters retried", "ids", ids)
	writeJSON(w, http.StatusOK, map[string]any{"retried": len(ids), "ids": ids})
}

func (s *Server) purgeDead(w http.ResponseWriter, r *http.Request) {
	list, err := s.letters(r)
	if err != nil {
		s.apiError(w, r, err)
		return
	}
	n, err := s.cfg.Inspector.PurgeDead(r.Context(), list)
	if err != nil {
		s.apiError(w, r, err)
		return
	}
	s.cfg.Log.Info("ui: dead letters purged", "count", n)
	writeJSON(w, http.StatusOK, map[string]any{"purged": n})
}

func (s *Server) runSchedule(w http.ResponseWriter, r *http.Request) {
	a, err := readAction(r)
	var sc *admin.Schedule
	if err == nil {
		sc, err = s.cfg.Inspector.Schedule(r.Context(), a.Name)
	}
	var id string
	if err == nil {
		id, err = s.enqueue(r.Context(), sc.Task)
	}
	if err != nil {
		s.apiError(w, r, err)
		return
	}
	s.cfg.Log.Info("ui: schedule run now", "name", a.Name, "id", id)
	writeJSON(w, http.StatusOK, map[string]any{"name": a.Name, "id": id})
}

func (s *Server) removeSchedule(w http.ResponseWriter, r *http.Request) {
	a, err := readAction(r)
	if err == nil {
		err = s.cfg.Inspector.RemoveSchedule(r.Context(), a.Name)
	}
	if err != nil {
		s.apiError(w, r, err)
		return
	}
	s.cfg.Log.Info("ui: schedule removed", "name", a.Name)
	writeJSON(w, http.StatusOK, map[string]any{"removed": a.Name})
}
