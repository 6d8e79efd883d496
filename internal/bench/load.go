package bench

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/pkg/eventstore"
)

// Event types and aggregate type of the example domain's wallet.
const (
	aggregateWallet   = "wallet"
	typeWalletOpened  = "WalletOpened"
	typeMoneyWasAdded = "MoneyWasAddedToWallet"
)

// domain generates wallet events with payloads of 100–300 bytes; one event
// in ten carries a W3C traceparent in its metadata.
type domain struct {
	rng *rand.Rand
}

func newDomain(seed uint64) *domain {
	return &domain{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// walletID returns a random UUID-shaped aggregate id.
func (d *domain) walletID() string {
	var b [16]byte
	for i := range b {
		b[i] = byte(d.rng.Uint32())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

const letters = "abcdefghijklmnopqrstuvwxyz "

// event returns the type and JSON payload of a wallet's event at version.
func (d *domain) event(version int64) (string, []byte) {
	target := 100 + d.rng.IntN(201)
	var typ string
	var p map[string]any
	if version == 1 {
		typ = typeWalletOpened
		p = map[string]any{"owner": "owner-" + strconv.Itoa(d.rng.IntN(1_000_000)), "currency": "EUR"}
	} else {
		typ = typeMoneyWasAdded
		p = map[string]any{"amount": 1 + d.rng.IntN(100_000), "currency": "EUR",
			"reference": "ref-" + strconv.FormatUint(d.rng.Uint64(), 36)}
	}
	b, _ := json.Marshal(p)
	if fill := target - len(b) - len(`,"note":""`); fill > 0 {
		note := make([]byte, fill)
		for i := range note {
			note[i] = letters[d.rng.IntN(len(letters))]
		}
		p["note"] = string(note)
		b, _ = json.Marshal(p)
	}
	return typ, b
}

var emptyMetadata = []byte("{}")

// metadata returns {} or, for one event in ten, a traceparent.
func (d *domain) metadata() []byte {
	if d.rng.IntN(10) != 0 {
		return emptyMetadata
	}
	return fmt.Appendf(nil, `{"traceparent":"00-%016x%016x-%016x-01"}`, d.rng.Uint64(), d.rng.Uint64(), d.rng.Uint64())
}

// metadataMap is metadata for eventstore.Append.
func (d *domain) metadataMap() map[string]string {
	var m map[string]string
	if err := json.Unmarshal(d.metadata(), &m); err != nil {
		panic(err) // generated above, always valid
	}
	return m
}

// loadChunk is the number of rows per COPY, each COPY its own transaction,
// so that the store holds many transaction ids as an application's would.
const loadChunk = 1000

// loadEvents writes n wallet events over the given number of aggregates
// into eventstore.events with COPY, loadChunk rows per transaction: each event goes to a wallet picked at
// random, at the wallet's next version, so versions run 1..k per wallet and
// the wallets' events interleave. It then vacuums and analyses the table so
// that no measured run pays for hint bits or missing statistics, and returns
// the highest position.
func loadEvents(ctx context.Context, pool *pgxpool.Pool, n, aggregates int, seed uint64) (int64, error) {
	d := newDomain(seed)
	ids := make([]string, aggregates)
	for i := range ids {
		ids[i] = d.walletID()
	}
	versions := make([]int64, aggregates)
	return copyEvents(ctx, pool, n, func() []any {
		a := d.rng.IntN(aggregates)
		versions[a]++
		typ, payload := d.event(versions[a])
		return []any{aggregateWallet, ids[a], versions[a], typ, payload, d.metadata()}
	})
}

// copyEvents writes n events, each the row next returns (aggregate type and
// id, version, event type, payload, metadata), into eventstore.events with
// COPY, loadChunk rows per transaction; then vacuums, analyses and
// checkpoints, so that no measured run pays for hint bits, missing
// statistics or the load's dirty pages, and returns the highest position.
func copyEvents(ctx context.Context, pool *pgxpool.Pool, n int, next func() []any) (int64, error) {
	columns := []string{"aggregate_type", "aggregate_id", "version", "event_type", "payload", "metadata"}
	for done := 0; done < n; {
		chunk := min(loadChunk, n-done)
		i := 0
		src := pgx.CopyFromFunc(func() ([]any, error) {
			if i == chunk {
				return nil, nil
			}
			i++
			return next(), nil
		})
		copied, err := pool.CopyFrom(ctx, pgx.Identifier{"eventstore", "events"}, columns, src)
		if err != nil {
			return 0, fmt.Errorf("bench: copy events: %w", err)
		}
		if copied != int64(chunk) {
			return 0, fmt.Errorf("bench: copied %d events, want %d", copied, chunk)
		}
		done += chunk
	}
	for _, stmt := range []string{"VACUUM (ANALYZE) eventstore.events", "CHECKPOINT"} {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			return 0, fmt.Errorf("bench: %s: %w", stmt, err)
		}
	}
	return eventstore.Head(ctx, pool)
}

// rate is events per second.
func rate(events int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(events) / d.Seconds()
}
