// Command forq is the command-line tool of forq, a durable task queue on NATS
// JetStream: it runs the embedded broker, enqueues tasks, runs workers and a
// pool of worker processes, and shows results. Run "forq --help".
package main

import (
	"os"

	"github.com/forqhq/forq/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
