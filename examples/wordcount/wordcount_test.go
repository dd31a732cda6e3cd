package wordcount_test

import (
	"testing"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/examples/wordcount"
)

// A Count is a "wordcount" task with payload {"text": ...}, the payload
// the README's forq enqueue examples send by hand.
func TestCountIsTheWordcountTask(t *testing.T) {
	task, err := forq.JSONTask(wordcount.Count{Text: "to be or not"})
	if err != nil {
		t.Fatal(err)
	}
	if task.Type != "wordcount" || string(task.Payload) != `{"text":"to be or not"}` {
		t.Errorf("got type %q payload %s, want wordcount {\"text\":\"to be or not\"}", task.Type, task.Payload)
	}
	if got := (wordcount.Count{Text: " to  be\tor not\n"}).Run(); got.Words != 4 {
		t.Errorf("got %d words, want 4", got.Words)
	}
}
