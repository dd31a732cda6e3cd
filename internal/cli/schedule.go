package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
)

// ScheduleCmd is "forq schedule": periodic tasks.
type ScheduleCmd struct {
	Add ScheduleAddCmd `cmd:"" help:"Add a periodic task: the broker enqueues it at every tick (--every or --cron), once per tick however many workers run."`
	Ls  ScheduleLsCmd  `cmd:"" aliases:"list" help:"List the periodic tasks."`
	Rm  ScheduleRmCmd  `cmd:"" aliases:"remove" help:"Remove periodic tasks: they tick no more (tasks already enqueued stay)."`
}

// ScheduleAddCmd is "forq schedule add".
type ScheduleAddCmd struct {
	ConnFlags     `embed:""`
	TopologyFlags `embed:""`

	Name        string         `arg:"" help:"Name of the schedule: letters, digits, '-' and '_'."`
	Type        string         `arg:"" help:"Type of the task each tick enqueues (echo and sleep are built in)."`
	Every       *time.Duration `help:"Tick at this interval, whole seconds, at least 1s (e.g. 5m)." xor:"spec"`
	Cron        string         `help:"Tick on this cron expression: 5 fields (minute hour day-of-month month day-of-week, e.g. '0 9 * * 1'), 6 with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly." xor:"spec"`
	TZ          string         `name:"tz" help:"With --cron: its IANA time zone, e.g. Europe/Paris (default UTC)."`
	Queue       string         `short:"q" default:"default" help:"Queue the tasks go to."`
	Payload     string         `help:"Payload of each task (opaque bytes; JSON by convention)."`
	MaxAttempts int            `default:"3" help:"How many times each task may run before it is dead-lettered."`
	Timeout     time.Duration  `default:"0" help:"Bound on each attempt, e.g. 30s; 0 is none."`
	Record      bool           `help:"Record each task's state and result (its ID is seq-<stream sequence>)."`
	Replace     bool           `help:"Replace a schedule of the same name instead of failing."`
}

// Run adds the schedule.
func (c *ScheduleAddCmd) Run(env *Env) error {
	if c.Every == nil && c.Cron == "" {
		return usageErr("give --every INTERVAL or --cron EXPRESSION")
	}
	if c.Every != nil && (*c.Every < time.Second || *c.Every%time.Second != 0) {
		return usageErr("--every %s: the broker ticks in whole seconds, at least 1s", *c.Every)
	}
	if c.TZ != "" && c.Cron == "" {
		return usageErr("--tz goes with --cron; an --every interval has no time zone")
	}
	if c.MaxAttempts < 1 {
		return usageErr("--max-attempts %d: must be at least 1", c.MaxAttempts)
	}
	if c.Timeout < 0 {
		return usageErr("--timeout %s: must not be negative", c.Timeout)
	}
	if v := builtins[c.Type].validate; v != nil {
		if err := v([]byte(c.Payload)); err != nil {
			return usageErr("--payload: %v", err)
		}
	}
	s := admin.Schedule{
		Name: c.Name, Cron: c.Cron, TimeZone: c.TZ,
		Task: forq.Task{Queue: c.Queue, Type: c.Type, MaxAttempts: c.MaxAttempts, Timeout: c.Timeout, Record: c.Record},
	}
	if c.Every != nil {
		s.Every = *c.Every
	}
	if c.Payload != "" {
		s.Task.Payload = []byte(c.Payload)
	}
	if err := s.Validate(); err != nil {
		return usageErr("%v", err)
	}
	ctx, in, done, err := c.inspector("forq schedule add", env, admin.Config{Replicas: c.Replicas, ResultTTL: c.ResultTTL, DuplicateWindow: c.DuplicateWindow})
	if err != nil {
		return err
	}
	defer done()
	if err := in.AddSchedule(ctx, s, c.Replace); err != nil {
		if errors.Is(err, admin.ErrScheduleExists) {
			return usageErr("%v: remove it first or add with --replace", err)
		}
		return enqueueErr(err)
	}
	got, err := in.Schedule(ctx, c.Name)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "schedule %s: %s%s -> queue %s, type %s\n", got.Name, got.Spec(), tzSuffix(got.TimeZone), got.Task.Queue, got.Task.Type)
	return nil
}

func tzSuffix(tz string) string {
	if tz == "" {
		return ""
	}
	return " (" + tz + ")"
}

// ScheduleLsCmd is "forq schedule ls".
type ScheduleLsCmd struct {
	ConnFlags `embed:""`

	JSON bool `help:"Print the schedules as a JSON array."`
}

// scheduleJSON is one schedule as "forq schedule ls --json" prints it.
type scheduleJSON struct {
	Name        string    `json:"name"`
	Spec        string    `json:"spec"`
	Every       string    `json:"every,omitempty"`
	Cron        string    `json:"cron,omitempty"`
	TimeZone    string    `json:"time_zone,omitempty"`
	Queue       string    `json:"queue"`
	Type        string    `json:"type"`
	Payload     string    `json:"payload,omitempty"`
	MaxAttempts int       `json:"max_attempts"`
	Timeout     string    `json:"timeout,omitempty"`
	Record      bool      `json:"record,omitempty"`
	Created     time.Time `json:"created"`
}

// Run lists the schedules.
func (c *ScheduleLsCmd) Run(env *Env) error {
	ctx, in, done, err := c.inspector("forq schedule ls", env, admin.Config{})
	if err != nil {
		return err
	}
	defer done()
	ss, err := in.Schedules(ctx)
	if err != nil {
		return err
	}
	if c.JSON {
		out := make([]scheduleJSON, len(ss))
		for i, s := range ss {
			j := scheduleJSON{Name: s.Name, Spec: s.Spec(), Cron: s.Cron, TimeZone: s.TimeZone, Queue: s.Task.Queue, Type: s.Task.Type,
				Payload: string(s.Task.Payload), MaxAttempts: s.Task.MaxAttempts, Record: s.Task.Record, Created: s.Created.UTC()}
			if s.Every > 0 {
				j.Every = s.Every.String()
			}
			if s.Task.Timeout > 0 {
				j.Timeout = s.Task.Timeout.String()
			}
			out[i] = j
		}
		b, _ := json.MarshalIndent(out, "", "  ")
		fmt.Fprintf(env.Stdout, "%s\n", b)
		return nil
	}
	if len(ss) == 0 {
		fmt.Fprintln(env.Stderr, "no schedules (add one with 'forq schedule add')")
		return nil
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSCHEDULE\tTIME ZONE\tQUEUE\tTYPE\tCREATED")
	for _, s := range ss {
		tz := s.TimeZone
		if tz == "" {
			tz = "-"
			if s.Cron != "" {
				tz = "UTC"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Spec(), tz, s.Task.Queue, s.Task.Type, s.Created.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

// ScheduleRmCmd is "forq schedule rm".
type ScheduleRmCmd struct {
	ConnFlags `embed:""`

	Names []string `arg:"" name:"name" help:"Name(s) of the schedules to remove."`
}

// Run removes the schedules.
func (c *ScheduleRmCmd) Run(env *Env) error {
	for _, name := range c.Names {
		if err := forq.ValidateQueue(name); err != nil {
			return usageErr("schedule name: %v; nothing was removed", err)
		}
	}
	ctx, in, done, err := c.inspector("forq schedule rm", env, admin.Config{})
	if err != nil {
		return err
	}
	defer done()
	failed := 0
	for _, name := range c.Names {
		if err := in.RemoveSchedule(ctx, name); err != nil {
			fmt.Fprintf(env.Stderr, "forq schedule rm: %v\n", err)
			failed++
			continue
		}
		fmt.Fprintf(env.Stdout, "removed schedule %s\n", name)
	}
	if failed > 0 {
		return &exitError{code: ExitError}
	}
	return nil
}
