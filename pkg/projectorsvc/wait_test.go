package projectorsvc_test

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
)

// `projector wait`: bad usage exits 2; an unknown or unapplied position, a
// timeout, exit 1 with the reason; an applied one exits 0, and the read
// model shows the event when it does.
func TestWaitCommand(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.env["PROJECTIONS"] = "wallet_balance"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"wait", "wallet_balance"}, "wait needs --position N"},
		{[]string{"wait", "wallet_balance", "--position", "x"}, `--position needs a positive event store position, not "x"`},
		{[]string{"wait", "wallet_balance", "--position", "1", "--timeout", "soon"}, `--timeout needs a positive duration`},
		{[]string{"wait", "--position", "1"}, "wait needs a projection name"},
	} {
		if r := call(ctx, b.env, b.defs, tc.args...); r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%q: want exit 2 and %q; %v", tc.args, tc.want, r)
		}
	}
	res, err := eventstore.Append(ctx, b.pool, "wallet", "w-1", eventstore.ExpectNoStream,
		eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{"owner": "ann"}},
		eventstore.NewEvent{Type: "MoneyWasAddedToWallet", Payload: map[string]int64{"amount": 250}})
	if err != nil {
		t.Fatal(err)
	}
	pos := strconv.FormatInt(res.LastPosition, 10)
	if r := call(ctx, b.env, b.defs, "wait", "wallet_balance", "--position", pos); r.code != 1 || !strings.Contains(r.stderr, "no such projection") {
		t.Fatalf("wait before init: want exit 1, no such projection; %v", r)
	}
	if r := call(ctx, b.env, b.defs, "init", "wallet_balance"); r.code != 0 {
		t.Fatalf("init: %v", r)
	}
	r := call(ctx, b.env, b.defs, "wait", "wallet_balance", "--position", pos, "--timeout", "300ms")
	if r.code != 1 || !strings.Contains(r.stderr, "timed out after 300ms") || !strings.Contains(r.stderr, "has not applied position "+pos) {
		t.Fatalf("wait with no replica running: want exit 1 and a timeout that says so; %v", r)
	}
	if r := call(ctx, b.env, b.defs, "wait", "wallet_balance", "--position", "999999"); r.code != 1 || !strings.Contains(r.stderr, "no event at this position") {
		t.Fatalf("wait for an unknown position: %v", r)
	}
	b.runProjector(t, examples.All)
	if r := call(ctx, b.env, b.defs, "wait", "wallet_balance", "--position", pos, "--timeout", "30s"); r.code != 0 || !strings.Contains(r.stdout, "has applied position "+pos) {
		t.Fatalf("wait with the projector running: %v", r)
	}
	var balance int64
	if err := b.pool.QueryRow(ctx, `SELECT balance FROM wallet_balance WHERE wallet_id = 'w-1'`).Scan(&balance); err != nil || balance != 250 {
		t.Fatalf("right after wait: balance %d, %v; want 250", balance, err)
	}
}
