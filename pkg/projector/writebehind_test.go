package projector_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// runWithRegistry starts a replica whose metrics go to a registry of its own.
func (b *bundle) runWithRegistry(t *testing.T, replica string, def projection.Definer) (*running, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return b.runWith(t, projector.Options{Replica: replica, LeaseTTL: 2 * time.Second, Logger: testLogger(t), Registerer: reg}, def), reg
}

func counter(t *testing.T, reg *prometheus.Registry, name, projection string) int {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "projection" && l.GetValue() == projection {
					return int(m.GetCounter().GetValue() + m.GetGauge().GetValue()) // whichever it is
				}
			}
		}
	}
	return 0
}

// stateWrites counts the messages ever stored in a projection's state
// bucket: records, watermarks and fences.
func (b *bundle) stateWrites(t *testing.T, name string) uint64 {
	t.Helper()
	s, err := b.js.Stream(context.Background(), contract.KVStream(contract.StateBucket(name)))
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.LastSeq
}

func TestWriteBehindWritesEachPartitionOncePerInterval(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	// 200 wallets × 11 events, interleaved: no batch of 50 holds two
	// events of one wallet, so writing per batch would write 2200 records.
	b.publishWallets(t, 200, 10)
	r1, reg := b.runWithRegistry(t, "r1", walletBalance("wallet_balance", projection.BatchSize(50), projection.StateWriteInterval(time.Hour)))
	b.waitFold(t, "wallet_balance", 30*time.Second)
	devtest.Eventually(t, 10*time.Second, func() error {
		if st := r1.p.Statuses(); len(st) != 1 || st[0].Processed < 2200 {
			return fmt.Errorf("status %+v: not all stored yet", st)
		}
		return nil
	})
	// Behind for all but the last batches: each wallet written about once.
	written := counter(t, reg, "jetproj_projector_records_written_total", "wallet_balance")
	if written < 200 || written > 600 {
		t.Fatalf("%d records written for 200 wallets and 2200 events, want about 200", written)
	}
	if n := b.stateWrites(t, "wallet_balance"); n > 800 {
		t.Fatalf("state bucket holds %d writes", n)
	}
	// Loading the 64 slots left no consumer on the bucket behind.
	st, err := b.js.Stream(context.Background(), "KV_jetproj_state_wallet_balance")
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(context.Background()); err != nil || info.State.Consumers != 0 {
		t.Fatalf("state bucket has consumers left after loading: %+v %v", info.State, err)
	}
	// Live events are written as they come.
	b.publish(t, "w3", "MoneyWasAddedToWallet", `{"amount":7}`)
	b.waitFold(t, "wallet_balance", 10*time.Second)

	// Without write-behind the same backlog writes a record per event.
	b2 := setup(t)
	b2.publishWallets(t, 200, 10)
	_, reg2 := b2.runWithRegistry(t, "r1", walletBalance("wallet_balance", projection.BatchSize(50), projection.StateWriteInterval(0)))
	b2.waitFold(t, "wallet_balance", 30*time.Second)
	if n := counter(t, reg2, "jetproj_projector_records_written_total", "wallet_balance"); n < 2200 {
		t.Fatalf("StateWriteInterval(0): %d records written, want 2200", n)
	}
}

// gatedWallets is the wallet projection whose flush hook blocks once it
// has run after partitions handled, until the gate opens.
func gatedWallets(after int64, opts ...projection.Option) (*projection.Projection[Balance], func(), <-chan struct{}) {
	p := walletBalance("wallet_balance", append([]projection.Option{projection.BatchSize(50), projection.StateWriteInterval(time.Hour)}, opts...)...)
	var n atomic.Int64
	gate, held := make(chan struct{}), make(chan struct{})
	var once sync.Once
	projection.OnFlush(p, func(context.Context, *projection.Context[Balance]) error {
		if n.Add(1) >= after {
			once.Do(func() { close(held) })
			<-gate
		}
		return nil
	})
	var open sync.Once
	return p, func() { open.Do(func() { close(gate) }) }, held
}

func TestWriteBehindKilledMidCatchUpAppliesEveryEventOnce(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	b.publishWallets(t, 300, 20)
	def, open, held := gatedWallets(2000)
	r1, reg := b.runWithRegistry(t, "r1", def)
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("projection never reached 2000 partitions")
	}
	// Catching up, nothing written yet: the state is in memory only.
	if n := counter(t, reg, "jetproj_projector_records_written_total", "wallet_balance"); n != 0 {
		t.Fatalf("%d records written while behind", n)
	}
	// Kill: the connection goes first, so nothing more can be written.
	r1.nc.Close()
	open()
	r1.stop(t)
	// Another replica reads those events again: every one applied once.
	b.run(t, "r2", walletBalance("wallet_balance", projection.BatchSize(50)))
	b.waitFold(t, "wallet_balance", 60*time.Second)
}

func TestWriteBehindStopWritesWhatItHandled(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	b.publishWallets(t, 300, 20)
	def, open, held := gatedWallets(2000)
	r1, reg := b.runWithRegistry(t, "r1", def)
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("projection never reached 2000 partitions")
	}
	r1.cancel()
	open()
	r1.stop(t)
	if counter(t, reg, "jetproj_projector_messages_total", "wallet_balance") == 0 {
		t.Fatal("nothing handled before the stop")
	}
	// A graceful stop writes every partition it changed, and then the
	// watermarks: no wallet's stored state misses an event its slot's
	// watermark covers. A state may hold more than its watermark covers:
	// the batch in flight at the cancel may have written some records
	// before it failed (KV records are written one by one) and its slot's
	// watermark not; the records' positions make the replay from the
	// watermark skip those events, as r2's fold below checks. (Wallet i's
	// k-th event is message k·300+i+1: the wallets are interleaved.)
	store := projector.NewKVStore(b.js, "jetproj_state_wallet_balance", 1)
	states := b.states(t, "wallet_balance")
	var stored uint64
	for i := range 300 {
		key := fmt.Sprintf("wallet/w%d", i)
		wm, err := store.Watermark(context.Background(), projector.SlotOf(key, 64))
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		for k := range 21 {
			if uint64(k*300+i+1) <= wm {
				want++
			}
		}
		var bal Balance
		if rec, ok := states[key]; ok {
			if err := jsonUnmarshal(rec.State, &bal); err != nil {
				t.Fatal(err)
			}
		}
		if bal.Count < want {
			t.Fatalf("%s: stored state has %d events, its slot's watermark %d covers %d: events lost", key, bal.Count, wm, want)
		}
		if bal.Count > want && states[key].Seq <= wm {
			// Ahead of the watermark, the record must say so, or the
			// replay would apply those events again.
			t.Fatalf("%s: stored state has %d events but claims sequence %d, within its slot's watermark %d", key, bal.Count, states[key].Seq, wm)
		}
		stored += uint64(bal.Count)
	}
	if stored < 2000 {
		t.Fatalf("the stop stored %d events, fewer than the 2000 handled before it", stored)
	}
	b.run(t, "r2", walletBalance("wallet_balance", projection.BatchSize(50)))
	b.waitFold(t, "wallet_balance", 60*time.Second)
}
