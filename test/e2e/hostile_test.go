package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projector"
)

// hostileIDs are aggregate ids from every byte class the event store
// takes (text: valid UTF-8 without NUL), up to its length limit (the
// unique index on aggregate ids holds about 2,700 bytes). Their events
// are ordinary: each must be projected and emitted exactly once.
var hostileIDs = []string{
	".", "..", "a.b.c", "*", ">", "a.*.>", "a b", " lead", "trail ", "a\r\nb", "a\nb", "a\tb",
	"ctl\x01\x02\x1f\x7f", "é✓🚀", "-dash", "--", "%41", "%", "~", "~0123", "=H", "=41", "a/b/c", "'quote\"",
	"<html>&amp;", `back\slash`, "\u200bzero-width", strings.Repeat(".", 1500), strings.Repeat("é.", 600),
	strings.Repeat("x", 2000),
}

// badPayloads are deposits whose payload does not decode into
// MoneyWasAddedToWallet: their wallets' partitions are parked with the
// decode error, in every projection that reads deposits.
var badPayloads = map[string]string{
	"bad-array":  `[]`,
	"bad-string": `{"amount":"x"}`,
	"bad-number": `{"amount":1e400}`,
	"bad-object": `{"amount":{"cents":5}}`,
}

// TestHostileInputNeverStopsThePipeline is issue 17's end-to-end test:
// events with aggregate ids of every byte class, payloads of every JSON
// shape and metadata with odd keys go through a feeder, a projector
// (wallet_balance into PostgreSQL with the emitter, wallet_ledger_kv and
// wallet_ratio_kv in KV with the projector's own emission, the global
// ticket_counts) and an emitter, all processes. Every ordinary event is
// projected and emitted exactly once; every bad one ends parked with a
// reason a person can act on; no service exits or stalls; the projector
// stays within its memory budget.
func TestHostileInputNeverStopsThePipeline(t *testing.T) {
	ctx := context.Background()
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)
	feeder := startFeeder(t, "feeder", feederEnv(dbURL, ns.URL(), "f"))
	env := pipelineEnv(dbURL, ns.URL(), "p1", examples.WalletBalanceName, "wallet_ledger_kv", "wallet_ratio_kv", examples.TicketCountsName)
	env["PROJECTOR_MAX_ATTEMPTS"], env["PROJECTOR_BACKOFF_MIN"], env["PROJECTOR_BACKOFF_MAX"] = "2", "10ms", "50ms"
	proj := startProc(t, "projector", bins.build(t).kvProjector, env, "run")
	em := startEmitter(t, "emitter", emitterEnv(dbURL, ns.URL(), "e"))
	procs := []*proc{feeder, proj, em}
	alive := func() {
		for _, p := range procs {
			if p.exited() {
				t.Fatalf("%s exited: %s\n%s", p.name, p.state, tail(p.stderr.String(), 40))
			}
		}
	}

	// The fold of what is appended: balances of the wallets every
	// projection completes, and the deposits wallet_ledger_kv sums.
	balance := map[string]int64{}
	owners := map[string]string{}
	oddMeta := map[string]string{
		"correlation id": "c-1", "weird.key*>": "y", strings.Repeat("k", 200): "long", "ключ": "v",
		"traceparent": "not a trace context", "": "empty key", "crlf\r\nkey": "v", "value": "line\r\nbreak",
	}
	appendWith := func(id string, meta map[string]string, evs ...eventstore.NewEvent) {
		t.Helper()
		for i := range evs {
			evs[i].Metadata = meta
		}
		if _, err := eventstore.Append(ctx, pool, "wallet", id, eventstore.ExpectAny, evs...); err != nil {
			t.Fatalf("append %q: %v", id, err)
		}
	}
	raw := func(typ, payload string) eventstore.NewEvent {
		return eventstore.NewEvent{Type: typ, Payload: json.RawMessage(payload)}
	}
	deposit := func(id string, amount int64) eventstore.NewEvent {
		balance[id] += amount
		return added(int(amount))
	}
	open := func(id, owner string) eventstore.NewEvent {
		owners[id] = owner
		return opened(owner)
	}
	for i := range 150 {
		id := fmt.Sprintf("w-%d", i)
		// (13 is wallet_ledger_kv's poison amount: not used here.)
		appendWith(id, nil, open(id, "o"), deposit(id, int64(i+20)), deposit(id, 7))
	}
	for i, id := range hostileIDs {
		meta := map[string]string(nil)
		if i%3 == 0 {
			meta = oddMeta
		}
		appendWith(id, meta, open(id, id), deposit(id, 5), deposit(id, int64(i+200)))
	}
	// Odd shapes that still decode: null (no amount), deep nesting and
	// unknown fields, a huge owner.
	appendWith("null-payload", nil, open("null-payload", "n"), raw(examples.TypeMoneyWasAddedToWallet, `null`), deposit("null-payload", 3))
	deep := strings.Repeat("[", 200) + strings.Repeat("]", 200)
	balance["deep"] += 4
	appendWith("deep", nil, open("deep", "d"), raw(examples.TypeMoneyWasAddedToWallet, `{"amount":4,"x":`+deep+`}`))
	appendWith("huge-owner", nil, open("huge-owner", strings.Repeat("ö", 150_000)), deposit("huge-owner", 9))
	// Events no projection handles, of odd aggregate types: the feeder
	// publishes them, the projections never see them.
	for _, typ := range []string{"wal.let", "*", "tick et"} {
		if _, err := eventstore.Append(ctx, pool, typ, "x", eventstore.ExpectAny, raw("Odd", `{}`)); err != nil {
			t.Fatal(err)
		}
	}
	// Bad payloads: parked in wallet_balance and wallet_ledger_kv (they
	// decode deposits); events after them wait behind them.
	for id, payload := range badPayloads {
		appendWith(id, nil, open(id, "b"), deposit(id, 2), raw(examples.TypeMoneyWasAddedToWallet, payload), added(1))
	}
	// A NaN state: parked in wallet_ratio_kv alone.
	appendWith("nan-wallet", nil, open("nan-wallet", "n"), deposit("nan-wallet", 0), deposit("nan-wallet", 6))
	// Tickets for the global projection, one whose registration does not
	// decode: the global partition parks on it.
	for i := range 30 {
		evs := []eventstore.NewEvent{{Type: examples.TypeTicketWasRegistered, Payload: map[string]string{"type": "bug"}}}
		if i%3 == 0 {
			evs = append(evs, eventstore.NewEvent{Type: examples.TypeTicketWasClosed, Payload: map[string]string{}})
		}
		if _, err := eventstore.Append(ctx, pool, "ticket", hostileOr(i), eventstore.ExpectAny, evs...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := eventstore.Append(ctx, pool, "ticket", "bad-ticket", eventstore.ExpectAny, raw(examples.TypeTicketWasRegistered, `[1,2]`)); err != nil {
		t.Fatal(err)
	}
	if _, err := eventstore.Append(ctx, pool, "ticket", "after-bad", eventstore.ExpectAny, eventstore.NewEvent{Type: examples.TypeTicketWasRegistered, Payload: map[string]string{"type": "x"}}); err != nil {
		t.Fatal(err)
	}

	// The feeder publishes every event exactly once.
	devtest.Eventually(t, 60*time.Second, func() error {
		alive()
		n, err := streamCount(ctx, js)
		if err != nil {
			return err
		}
		if last := lastPosition(t, pool); int64(n) != last {
			return fmt.Errorf("EVENTS holds %d of %d events", n, last)
		}
		return nil
	})
	verifyExactlyOnce(t, pool, js)

	bad := func(id string) bool { _, ok := badPayloads[id]; return ok }
	// Every bad event is parked with its reason, in each projection.
	wantParked := map[string]map[string]string{examples.WalletBalanceName: {}, "wallet_ledger_kv": {}, "wallet_ratio_kv": {}, examples.TicketCountsName: {}}
	for id := range badPayloads {
		wantParked[examples.WalletBalanceName]["wallet/"+id] = "MoneyWasAddedToWallet"
		wantParked["wallet_ledger_kv"]["wallet/"+id] = "MoneyWasAddedToWallet"
		wantParked["wallet_ratio_kv"]["wallet/"+id] = "MoneyWasAddedToWallet"
	}
	wantParked["wallet_ratio_kv"]["wallet/nan-wallet"] = "state cannot be stored"
	wantParked["wallet_ratio_kv"]["wallet/null-payload"] = "state cannot be stored" // its null deposit is 0/0 too
	wantParked[examples.TicketCountsName]["global"] = "TicketWasRegistered"
	devtest.Eventually(t, 90*time.Second, func() error {
		alive()
		sts, err := hostileStatus(t, env)
		if err != nil {
			return err
		}
		for _, st := range sts {
			got := map[string]string{}
			for _, r := range st.Parked {
				got[r.Key] = r.Parked.EventType + ": " + r.Parked.Error
			}
			want := wantParked[st.Name]
			for k, reason := range want {
				if !strings.Contains(got[k], reason) {
					return fmt.Errorf("%s: %q parked with %q, want a reason naming %q", st.Name, k, got[k], reason)
				}
			}
			if len(got) != len(want) {
				return fmt.Errorf("%s: parked %v, want only %v", st.Name, got, want)
			}
		}
		return nil
	})

	// wallet_balance: every other wallet's row equals the fold; its
	// derived events went out once each, the last with the final balance.
	devtest.Eventually(t, 90*time.Second, func() error {
		alive()
		if err := outboxEmpty(ctx, pool); err != nil {
			return err
		}
		rows, err := examplecheck.ReadWallets(ctx, pool)
		if err != nil {
			return err
		}
		for id, want := range balance {
			if bad(id) {
				continue
			}
			if got, ok := rows[id]; !ok || got.Balance != want || got.Owner != owners[id] {
				return fmt.Errorf("wallet %q: row %+v (present %v), want balance %d", id, got.Balance, ok, want)
			}
		}
		return nil
	})
	checkLastDerived(t, js, contract.ProjectionStream(examples.WalletBalanceName), examples.WalletBalanceName, balance, bad)
	checkLastDerived(t, js, contract.ProjectionStream("wallet_ledger_kv"), "wallet_ledger_kv", balance, bad)

	// ticket_counts: skip the bad registration; the counts then equal the
	// fold without it.
	projectorCmdWith(t, bins.build(t).kvProjector, env, "skip", examples.TicketCountsName, "global")
	devtest.Eventually(t, 60*time.Second, func() error {
		alive()
		var open, closed int
		if err := pool.QueryRow(ctx, `SELECT open, closed FROM ticket_counts WHERE id = 1`).Scan(&open, &closed); err != nil {
			return err
		}
		if open != 21 || closed != 10 {
			return fmt.Errorf("ticket_counts open %d closed %d, want 21 and 10", open, closed)
		}
		return nil
	})

	alive()
	if hwm := peakRSS(t, proj); hwm > 400<<20 {
		t.Errorf("projector peak RSS %d MiB, budget 400 MiB", hwm>>20)
	} else {
		t.Logf("projector peak RSS %d MiB (budget 400 MiB)", hwm>>20)
	}
}

// hostileOr names ticket i: a hostile id for the first ones.
func hostileOr(i int) string {
	if i < len(hostileIDs) {
		return hostileIDs[i]
	}
	return "t-" + strconv.Itoa(i)
}

// hostileStatus is `projector status --json` of the test's projector binary.
func hostileStatus(t *testing.T, env map[string]string) ([]projector.Status, error) {
	t.Helper()
	r := runBinary(t, bins.build(t).kvProjector, env, "status", "--json")
	if r.code != 0 {
		return nil, fmt.Errorf("projector status --json: exit %d: %s", r.code, tail(r.stderr, 10))
	}
	var sts []projector.Status
	if err := json.Unmarshal([]byte(r.stdout), &sts); err != nil {
		return nil, fmt.Errorf("projector status --json: %v", err)
	}
	return sts, nil
}

func projectorCmdWith(t *testing.T, bin string, env map[string]string, args ...string) {
	t.Helper()
	if r := runBinary(t, bin, env, args...); r.code != 0 {
		t.Fatalf("projector %s: exit %d\n%s", strings.Join(args, " "), r.code, tail(r.stderr, 20))
	}
}

// checkLastDerived checks a projection's derived events: each once, in
// order, and each wallet's last one carrying its final balance; wallets
// for which skip is true may stop short.
func checkLastDerived(t *testing.T, js jetstream.JetStream, stream, name string, balance map[string]int64, skip func(string) bool) {
	t.Helper()
	var bySubject map[string][]derivedMsg
	devtest.Eventually(t, 60*time.Second, func() error {
		bySubject = checkExactlyOnce(t, readDerived(t, js, stream))
		for id, want := range balance {
			if skip(id) {
				continue
			}
			ms := bySubject[projector.EmitSubject(name, "wallet/"+id)]
			if len(ms) == 0 {
				return fmt.Errorf("%s: wallet %q has no derived event", name, id)
			}
			var last examples.WalletBalanceWasChanged
			if err := json.Unmarshal(ms[len(ms)-1].data, &last); err != nil || last.Balance != want || last.WalletID != id {
				return fmt.Errorf("%s: wallet %q: last derived event %.80s, want balance %d", name, id, ms[len(ms)-1].data, want)
			}
		}
		return nil
	})
}

// peakRSS is the process's peak resident set (VmHWM).
func peakRSS(t *testing.T, p *proc) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}
