//go:build linux

package pool_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/forqhq/forq/pool"
)

// A pool of three children, each told its index in its environment. With
// UntilEmpty a child that exits 0 is done and not restarted, and Run
// returns once every child is done or Backlog reports no work left: the
// close and join of multiprocessing.Pool. A pool of forq workers would
// report the queue's backlog; here there is always work until the children
// finish. The children's lines come in whatever order they run.
func ExampleSupervisor_Run() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	sup, err := pool.New(pool.Config{
		Size:       3,
		Command:    []string{"sh", "-c", `echo "child $` + pool.EnvIndex + ` done"`},
		UntilEmpty: true,
		Backlog:    func(context.Context) (int64, error) { return 1, nil },
		Stdout:     os.Stdout,
		NoPrefix:   true, // without it each line starts with "[<index> <pid>] "
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("Run:", sup.Run(ctx))
	fmt.Println("restarts:", sup.Restarts())
	// Unordered output:
	// child 0 done
	// child 1 done
	// child 2 done
	// Run: <nil>
	// restarts: 0
}
