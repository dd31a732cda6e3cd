package forq

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// TypeExec is the task type of exec tasks: the payload is an ExecSpec and
// the worker runs that command. Workers run them only when allowed to.
const TypeExec = "exec"

// ExitTempFail is the exit code (EX_TEMPFAIL) by which an exec task's
// command says "try again later": the task is retried after its back-off.
const ExitTempFail = 75

// ExecSpec is the payload of an exec task, JSON-encoded.
type ExecSpec struct {
	// Argv is the command and its arguments; Argv[0] is looked up in the
	// worker's PATH when it has no slash.
	Argv []string `json:"argv"`
	// Env adds "NAME=value" entries to the command's environment, which is
	// otherwise the worker's without its FORQ_* variables.
	Env []string `json:"env,omitempty"`
	// Dir is the working directory; empty means the worker's.
	Dir string `json:"dir,omitempty"`
	// Stdin is given to the command on its standard input.
	Stdin string `json:"stdin,omitempty"`
	// Stream asks the worker to publish the command's output as it comes,
	// each chunk the command writes a core NATS message on
	// forq.output.<task ID>.stdout or .stderr (SubjectOutputPrefix), for
	// whoever subscribed before it runs; the result keeps the output as it
	// otherwise does. A worker without a connection to publish on
	// (consumer.ExecConfig.Conn) runs the command all the same.
	Stream bool `json:"stream,omitempty"`
}

// Validate reports what is wrong with the spec, wrapping ErrInvalidTask.
func (s *ExecSpec) Validate() error {
	if len(s.Argv) == 0 || s.Argv[0] == "" {
		return fmt.Errorf("%w: exec task without a command (argv is empty)", ErrInvalidTask)
	}
	for _, e := range s.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("%w: exec env entry %q is not NAME=value", ErrInvalidTask, e)
		}
	}
	return nil
}

// ParseExecSpec decodes and validates an exec task's payload.
func ParseExecSpec(payload []byte) (*ExecSpec, error) {
	var s ExecSpec
	if err := json.Unmarshal(payload, &s); err != nil {
		return nil, fmt.Errorf("%w: exec payload is not a JSON object like {\"argv\":[\"ls\",\"-l\"]}: %v", ErrInvalidTask, err)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// ExecResult is what an exec task records as its result, JSON-encoded, on
// success and on failure alike.
type ExecResult struct {
	// ExitCode of the command; -1 when a signal killed it.
	ExitCode int `json:"exit_code"`
	// Signal that killed the command, e.g. "killed"; empty if it exited.
	Signal string `json:"signal,omitempty"`
	// SignalNumber is the number of Signal, e.g. 9.
	SignalNumber int `json:"signal_number,omitempty"`
	// Stdout is the command's standard output, up to the worker's bound.
	Stdout string `json:"stdout"`
	// StdoutTruncated is true when Stdout was cut at the bound.
	StdoutTruncated bool `json:"stdout_truncated,omitempty"`
	// StderrTail is the end of the command's standard error.
	StderrTail string `json:"stderr_tail,omitempty"`
	// Duration the command ran.
	Duration time.Duration `json:"duration_ns"`
}
