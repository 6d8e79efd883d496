package lease_test

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/lease"
)

// One feeder per name is active; every replica calls Run with the same key
// and its own holder name, and the others wait as standbys.
func ExampleRun() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	srv, err := devenv.StartNATS(ctx, devenv.NATSOptions{NoSync: true})
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}

	kv, err := lease.EnsureBucket(ctx, js, "jetproj_leases", 10*time.Second, 1)
	if err != nil {
		panic(err)
	}
	err = lease.Run(ctx, kv, "feeder.main", "pod-a", lease.Options{}, func(ctx context.Context, l *lease.Lease) error {
		fmt.Printf("%s holds %s\n", l.Holder(), l.Key())
		// Work until ctx is done, passing l.Revision() along as the fencing
		// token. Here: stop at once.
		cancel()
		<-ctx.Done()
		return nil
	})
	fmt.Println("stopped:", err)
	// Output:
	// pod-a holds feeder.main
	// stopped: context canceled
}
