package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/examples"
)

// view draws frames: the read models on the left, the derived events as
// they arrive on project.> on the right.
type view struct {
	out    io.Writer
	redraw bool
	start  time.Time
	js     jetstream.JetStream

	mu      sync.Mutex
	recent  []derived // the last derived events, newest last
	seen    int       // derived events received by the subscription
	linked  int
	high    []string // wallets that became high value
	lastEvt string   // the last event fed to EVENTS

	// from the streams, at the end
	stats streamStats
}

type derived struct {
	at      time.Time
	subject string
	typ     string
	payload string
}

const (
	leftWidth   = 50
	rightWidth  = 96
	recentShown = 14
)

func newView(o Options) *view {
	return &view{out: o.Out, redraw: o.Redraw, start: time.Now()}
}

// watch subscribes to the derived events and follows EVENTS.
func (v *view) watch(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) error {
	v.js = js
	onDerived := func(m *nats.Msg) {
		v.mu.Lock()
		defer v.mu.Unlock()
		d := derived{at: time.Now(), subject: m.Subject, typ: m.Header.Get(contract.HeaderEventType), payload: string(m.Data)}
		if strings.HasPrefix(m.Subject, contract.ProjectionPrefix+".") {
			v.seen++
		} else {
			v.linked++
		}
		if d.typ == "WalletBecameHighValue" {
			var p struct {
				WalletID string `json:"walletId"`
			}
			if json.Unmarshal(m.Data, &p) == nil {
				v.high = append(v.high, p.WalletID)
			}
		}
		v.recent = append(v.recent, d)
		if len(v.recent) > recentShown {
			v.recent = v.recent[len(v.recent)-recentShown:]
		}
	}
	if err := subscribe(ctx, nc, contract.AllProjections, onDerived); err != nil {
		return err
	}
	for _, l := range linkStreams {
		if err := subscribe(ctx, nc, contract.LinkedSubjects(l), onDerived); err != nil {
			return err
		}
	}
	go func() {
		_ = watchStream(ctx, js, contract.EventsStream, func(m jetstream.Msg) {
			v.mu.Lock()
			v.lastEvt = m.Subject() + " " + m.Headers().Get(contract.HeaderEventType)
			v.mu.Unlock()
		})
	}()
	return nil
}

// fedCount is the number of messages on EVENTS.
func (v *view) fedCount() int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := v.js.Stream(ctx, contract.EventsStream)
	if err != nil {
		return 0
	}
	return int(s.CachedInfo().State.Msgs)
}

// draw prints one frame.
func (v *view) draw(ctx context.Context, pool *pgxpool.Pool, written int, phase string) {
	left := readModels(ctx, pool)
	v.mu.Lock()
	right := []string{"DERIVED EVENTS  (nats sub 'project.>')", ""}
	for _, d := range v.recent {
		right = append(right, fit(d.at.Format("15:04:05.000")+" "+d.subject, rightWidth))
		right = append(right, fit("             "+d.typ+" "+d.payload, rightWidth))
	}
	if len(v.recent) == 0 {
		right = append(right, "(none yet: they follow the read model's commit)")
	}
	if len(v.high) > 0 {
		left = append(left, "", "high_value_wallets (from project.wallet_balance.>)", "  "+fit(strings.Join(v.high, " "), leftWidth-2))
	}
	header := fmt.Sprintf("── jetproj demo · %s · %5.1fs · %d appended · %d on EVENTS · %d derived · %d on completed_orders ──",
		phase, time.Since(v.start).Seconds(), written, v.fedCount(), v.seen, v.linked)
	last := v.lastEvt
	v.mu.Unlock()

	var b strings.Builder
	if v.redraw {
		b.WriteString("\x1b[H\x1b[2J")
	} else {
		b.WriteString("\n")
	}
	b.WriteString(header + "\n")
	if last != "" {
		b.WriteString("last event on EVENTS: " + last + "\n")
	}
	b.WriteString("\n")
	for i := 0; i < max(len(left), len(right)); i++ {
		l, r := "", ""
		if i < len(left) {
			l = left[i]
		}
		if i < len(right) {
			r = right[i]
		}
		b.WriteString(pad(l, leftWidth) + " │ " + r + "\n")
	}
	fmt.Fprint(v.out, b.String())
}

// readModels renders the example read models, read from PostgreSQL.
func readModels(ctx context.Context, pool *pgxpool.Pool) []string {
	lines := []string{"READ MODELS  (PostgreSQL)", "", "wallet_balance (top balances)"}
	rows, err := pool.Query(ctx, `SELECT wallet_id, owner, balance FROM wallet_balance ORDER BY balance DESC, wallet_id LIMIT 6`)
	if err == nil {
		for rows.Next() {
			var id, owner string
			var bal int64
			if rows.Scan(&id, &owner, &bal) == nil {
				lines = append(lines, fmt.Sprintf("  %-10s %-6s %12s", id, owner, money(bal)))
			}
		}
		rows.Close()
	}
	var wallets int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM wallet_balance`).Scan(&wallets)
	lines = append(lines, fmt.Sprintf("  (%d wallets)", wallets))
	if c, err := examplecheck.ReadTicketCounts(ctx, pool); err == nil {
		lines = append(lines, "", "ticket_counts (global)", fmt.Sprintf("  open %d · closed %d", c.Open, c.Closed))
	}
	var total, done int
	if pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE completed) FROM order_fulfilment`).Scan(&total, &done) == nil {
		lines = append(lines, "", "order_fulfilment", fmt.Sprintf("  %d orders · %d fully completed", total, done))
	}
	return lines
}

func money(cents int64) string {
	sign := ""
	if cents < 0 {
		sign, cents = "-", -cents
	}
	return fmt.Sprintf("%s%d.%02d", sign, cents/100, cents%100)
}

func pad(s string, n int) string {
	s = fit(s, n)
	return s + strings.Repeat(" ", n-utf8.RuneCountInString(s))
}

func fit(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// streamStats are counted from the streams themselves at the end of a run.
type streamStats struct {
	derived, linked, duplicates int
	// lastBalance is the balance in each wallet's last
	// WalletBalanceWasChanged, by wallet id.
	lastBalance map[string]int64
}

// balancesMatch reads the derived streams and checks that each wallet's
// last WalletBalanceWasChanged carries the balance of its row.
func (v *view) balancesMatch(ctx context.Context, pool *pgxpool.Pool) error {
	st, err := readDerived(ctx, v.js)
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.stats = st
	v.mu.Unlock()
	rows, err := examplecheck.ReadWallets(ctx, pool)
	if err != nil {
		return err
	}
	for id, r := range rows {
		if got, ok := st.lastBalance[id]; !ok || got != r.Balance {
			return fmt.Errorf("wallet %s: last WalletBalanceWasChanged says %d (present: %v), read model %d", id, got, ok, r.Balance)
		}
	}
	return nil
}

// readDerived reads every derived event of the example projections' own
// streams and of the linked streams.
func readDerived(ctx context.Context, js jetstream.JetStream) (streamStats, error) {
	st := streamStats{lastBalance: map[string]int64{}}
	ids := map[string]bool{}
	var streams []string
	for _, n := range examples.Names() {
		streams = append(streams, contract.ProjectionStream(n))
	}
	streams = append(streams, linkStreams...)
	for _, name := range streams {
		s, err := js.Stream(ctx, name)
		if err != nil {
			continue // a projection that emits nothing has an empty or no stream
		}
		info, err := s.Info(ctx)
		if err != nil || info.State.Msgs == 0 {
			continue
		}
		c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		if err != nil {
			return st, err
		}
		for got := uint64(0); got < info.State.Msgs; {
			batch, err := c.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
			if err != nil {
				return st, err
			}
			n := 0
			for m := range batch.Messages() {
				n++
				id := m.Headers().Get(jetstream.MsgIDHeader)
				key := name + "/" + id
				if ids[key] {
					st.duplicates++
				}
				ids[key] = true
				if contains(linkStreams, name) {
					st.linked++
				} else {
					st.derived++
				}
				if m.Headers().Get(contract.HeaderEventType) == examples.TypeWalletBalanceWasChanged {
					var p examples.WalletBalanceWasChanged
					if json.Unmarshal(m.Data(), &p) == nil {
						st.lastBalance[p.WalletID] = p.Balance
					}
				}
			}
			if err := batch.Error(); err != nil {
				return st, err
			}
			if n == 0 {
				return st, fmt.Errorf("demo: stream %s: read %d of %d messages", name, got, info.State.Msgs)
			}
			got += uint64(n)
		}
	}
	return st, nil
}

// result fills the counts of r from the streams.
func (v *view) result(r Result) Result {
	r.Fed = v.fedCount()
	v.mu.Lock()
	defer v.mu.Unlock()
	r.Derived, r.Linked, r.Duplicates = v.stats.derived, v.stats.linked, v.stats.duplicates
	return r
}
