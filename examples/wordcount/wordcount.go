// Package wordcount is the task type that examples/producer enqueues and
// examples/worker runs, declared once for both: a line of text whose words
// are counted.
package wordcount

import "strings"

// Count is the payload of a wordcount task (JSON {"text": "..."}). It
// names its task type, so that producer.Producer.EnqueueJSON and
// consumer.HandleJSON need no type string.
type Count struct {
	Text string `json:"text"`
}

// Kind returns the task type, "wordcount".
func (Count) Kind() string { return "wordcount" }

// Result is a wordcount task's result (JSON {"words": N}).
type Result struct {
	Words int `json:"words"`
}

// Run counts the words of c.
func (c Count) Run() Result { return Result{Words: len(strings.Fields(c.Text))} }
