package broker

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// The roles of a broker's credentials (Options.CredentialsDir). Each is a
// NATS nkey user whose seed is the file <role>.nk in the directory; a
// client presents it with forq's --nkey flag, nats.NkeyOptionFromSeed, or
// the nats CLI's --nkey.
const (
	// RoleProducer enqueues tasks (any queue, delayed ones too), claims
	// unique keys, waits for results, reads task records and cancels
	// tasks. It cannot consume tasks, nor delete or purge a stream.
	RoleProducer = "producer"
	// RoleWorker consumes the tasks of any queue: it declares its queue's
	// consumers, pulls, acknowledges, writes results and dead letters,
	// takes locks, publishes its status and exec tasks' output, and
	// answers whether it runs a task. It cannot delete or purge a stream,
	// nor touch a dead letter once written.
	RoleWorker = "worker"
	// RoleAdmin may do everything in forq's account: declare the topology,
	// purge, delete, retry dead letters, pause queues, schedules.
	RoleAdmin = "admin"
	// RoleSystem is a user of the NATS system account, for the nats
	// CLI's server commands (nats server ls, nats server report
	// jetstream); it sees no task.
	RoleSystem = "sys"
)

// Roles are the credentials a broker with Options.CredentialsDir creates,
// in the order the README lists them.
var Roles = []string{RoleProducer, RoleWorker, RoleAdmin, RoleSystem}

// systemAccount is the name of the broker's system account when it runs
// with credentials.
const systemAccount = "SYS"

// SeedFile is the path of role's nkey seed in the credentials directory
// dir: dir/<role>.nk.
func SeedFile(dir, role string) string { return filepath.Join(dir, role+".nk") }

// loadCredentials reads the seed of each role in dir, creating the
// directory (mode 0700) and any missing seed (mode 0600) first, and returns
// each role's key pair. A seed that others than its owner may read is
// refused.
func loadCredentials(dir string) (map[string]nkeys.KeyPair, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("broker: create credentials directory: %w", err)
	}
	keys := make(map[string]nkeys.KeyPair, len(Roles))
	for _, role := range Roles {
		kp, err := loadSeed(SeedFile(dir, role))
		if err != nil {
			return nil, fmt.Errorf("broker: %s credentials: %w", role, err)
		}
		keys[role] = kp
	}
	return keys, nil
}

// loadSeed reads the user nkey seed in file, or creates one there.
func loadSeed(file string) (nkeys.KeyPair, error) {
	b, err := os.ReadFile(file) //nolint:gosec // the path is the operator's credentials directory
	if errors.Is(err, fs.ErrNotExist) {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return nil, err
		}
		seed, err := kp.Seed()
		if err != nil {
			return nil, err
		}
		// O_EXCL: a seed written meanwhile by another process is not
		// replaced under the clients that use it.
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600) //nolint:gosec // see above
		if err != nil {
			return nil, err
		}
		_, werr := f.Write(append(seed, '\n'))
		if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
			return nil, fmt.Errorf("write %s: %w", file, err)
		}
		return kp, nil
	}
	if err != nil {
		return nil, err
	}
	if runtime.GOOS != "windows" {
		fi, err := os.Stat(file)
		if err != nil {
			return nil, err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("%s has mode %04o: others may read this secret; chmod 600 it", file, fi.Mode().Perm())
		}
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
	if err != nil {
		return nil, fmt.Errorf("%s is not an nkey seed: %w", file, err)
	}
	if pub, _ := kp.PublicKey(); !nkeys.IsValidPublicUserKey(pub) {
		return nil, fmt.Errorf("%s is not a user nkey seed (it starts with SU)", file)
	}
	return kp, nil
}

// authOptions fills in sopts the nkey users of keys: producer, worker and
// admin in the global account (where forq's streams are, so that a broker
// that ran without credentials keeps its tasks once it has some), sys in
// the system account.
func authOptions(sopts *server.Options, keys map[string]nkeys.KeyPair) error {
	// With only the global and the system account, and no authorization
	// block in its configuration, nats-server lets clients without
	// credentials into the global account (a no-auth user it adds
	// itself). An empty authorization block turns that off; a third
	// account would too, but would leave the global account without
	// JetStream.
	if err := sopts.ProcessConfigString("authorization: {}"); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	sys := server.NewAccount(systemAccount)
	sopts.Accounts = []*server.Account{sys}
	sopts.SystemAccount = systemAccount
	for _, role := range Roles {
		pub, err := keys[role].PublicKey()
		if err != nil {
			return fmt.Errorf("broker: %s credentials: %w", role, err)
		}
		u := &server.NkeyUser{Nkey: pub, Permissions: RolePermissions(role)}
		if role == RoleSystem {
			u.Account = sys
		}
		sopts.Nkeys = append(sopts.Nkeys, u)
	}
	return nil
}

// nkeyOption is the nats.Option that presents kp.
func nkeyOption(kp nkeys.KeyPair) (nats.Option, error) {
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, err
	}
	return nats.Nkey(pub, kp.Sign), nil
}

// The JetStream API subjects the roles use; see RolePermissions.
const (
	jsAPI       = "$JS.API."
	tasksStream = forq.StreamTasks
)

// kvStream is the stream that holds KV bucket b.
func kvStream(b string) string { return "KV_" + b }

// RolePermissions are the subjects role may publish and subscribe to; nil
// (all) for RoleAdmin and RoleSystem. They are the least each role needs,
// found by running forq's flows with them (see the README's table).
func RolePermissions(role string) *server.Permissions {
	var pub, sub []string
	switch role {
	case RoleProducer:
		pub, sub = producerPublish(), producerSubscribe()
	case RoleWorker:
		pub, sub = workerPublish(), workerSubscribe()
	default:
		return nil
	}
	perms := &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: sub},
	}
	if role == RoleWorker {
		// A worker answers forq.running requests on their reply subjects.
		perms.Response = &server.ResponsePermission{MaxMsgs: 1}
	}
	return perms
}

// clientSubscribe are the subjects any forq client subscribes to: its
// replies and the messages of its KV watches and ordered consumers.
func clientSubscribe() []string { return []string{"_INBOX.>"} }

// clientPublish are the subjects both producers and workers publish to:
// the look-ups of the topology, KV reads and broker health.
func clientPublish() []string {
	p := []string{
		jsAPI + "STREAM.INFO.*",
		// Asked when a request fails, to say whether the disk is full.
		forq.SubjectBrokerHealth,
		// The replies of ordered consumers (KV watches) to flow control.
		"$JS.FC.>",
	}
	// KV reads: direct gets of forq's buckets.
	for _, b := range []string{forq.BucketResults, forq.BucketCancel, forq.BucketUnique, forq.BucketLocks, forq.BucketWorkers} {
		p = append(p, jsAPI+"DIRECT.GET."+kvStream(b)+".>")
	}
	return p
}

// watch are the subjects of an ordered consumer (a KV watch) on bucket b:
// created and deleted by the client.
func watch(b string) []string {
	return []string{
		jsAPI + "CONSUMER.CREATE." + kvStream(b) + ".>",
		jsAPI + "CONSUMER.DELETE." + kvStream(b) + ".*",
	}
}

func producerPublish() []string {
	p := clientPublish()
	p = append(p,
		forq.SubjectTasksPrefix+">",
		forq.SubjectSchedulePrefix+">",
		// A canceled delayed task's schedule is looked up (a direct get
		// when the stream allows them) and deleted.
		jsAPI+"DIRECT.GET."+tasksStream+".>",
		jsAPI+"STREAM.MSG.GET."+tasksStream,
		jsAPI+"STREAM.MSG.DELETE."+tasksStream,
		"$KV."+forq.BucketResults+".>",
		// WaitMany reads many results in one batched direct get.
		jsAPI+"DIRECT.GET."+kvStream(forq.BucketResults),
		"$KV."+forq.BucketUnique+".>",
		"$KV."+forq.BucketCancel+".>",
	)
	p = append(p, watch(forq.BucketResults)...)
	return p
}

// producerSubscribe: a producer may follow its exec tasks' output.
func producerSubscribe() []string {
	return append(clientSubscribe(), forq.SubjectOutputPrefix+">")
}

func workerPublish() []string {
	p := clientPublish()
	p = append(p,
		// The queue's consumers (one per priority level): declared by the
		// first worker of the queue.
		jsAPI+"CONSUMER.CREATE."+tasksStream+".>",
		jsAPI+"CONSUMER.INFO."+tasksStream+".*",
		jsAPI+"CONSUMER.MSG.NEXT."+tasksStream+".>",
		// Whether a delayed or periodic task's schedule is stored for
		// its queues (the look-up of the last one): see internal/pull's
		// schedules.go.
		jsAPI+"DIRECT.GET."+tasksStream+".>",
		jsAPI+"STREAM.MSG.GET."+tasksStream,
		// Acks and in-progress acks, for as long as a task runs.
		"$JS.ACK."+tasksStream+".>",
		forq.SubjectDeadPrefix+">",
		forq.SubjectRunningPrefix+">",
		forq.SubjectOutputPrefix+">",
		"$KV."+forq.BucketResults+".>",
		"$KV."+forq.BucketWorkers+".>",
		"$KV."+forq.BucketLocks+".>",
		"$KV."+forq.BucketUnique+".>",
	)
	p = append(p, watch(forq.BucketCancel)...)
	p = append(p, watch(forq.BucketLocks)...)
	return p
}

// workerSubscribe: a worker answers forq.running requests, watches its
// queues' task subjects (core NATS) to pull as soon as a task arrives, and
// their schedules and the periodic definitions, to re-check a level the
// broker will queue tasks to.
func workerSubscribe() []string {
	return append(clientSubscribe(), forq.SubjectRunningPrefix+">", forq.SubjectTasksPrefix+">", forq.SubjectSchedulePrefix+">", forq.SubjectPeriodicPrefix+">")
}
