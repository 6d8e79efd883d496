package projectorsvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// readStatus reads a projection's status. Head is the last message on the
// projection's own subjects, not on the whole stream: a projection of
// wallets is caught up when it has handled the last wallet event, whatever
// came after it for tickets.
func (s *service) readStatus(ctx context.Context, d *projection.Definition) (projector.Status, error) {
	return ReadStatus(ctx, s.js(), d, s.replicas())
}

// ReadStatus is a projection's status as `projector status` shows it:
// projector.Admin.Status, with the head of the projection's own subjects.
func ReadStatus(ctx context.Context, js jetstream.JetStream, d *projection.Definition, replicas int) (projector.Status, error) {
	st, err := projector.NewAdmin(js, projector.AdminOptions{Replicas: replicas}).Status(ctx, d)
	if err != nil {
		return st, err
	}
	if head, ok := subjectsHead(ctx, js, d); ok {
		st.Head = head
		st.Lag = 0
		if st.Head > st.Position {
			st.Lag = st.Head - st.Position
		}
	}
	return st, nil
}

// subjectsHead is the sequence of the last message on d's subjects; ok is
// false when it cannot be told (custom sources).
func (s *service) subjectsHead(ctx context.Context, d *projection.Definition) (uint64, bool) {
	return subjectsHead(ctx, s.js(), d)
}

func subjectsHead(ctx context.Context, js jetstream.JetStream, d *projection.Definition) (uint64, bool) {
	spec := projectionspec.Of(d)
	src := spec.SourceConfig()
	if spec.CustomSource() != nil || src.Stream == "" || len(src.Subjects) == 0 {
		return 0, false
	}
	stream, err := js.Stream(ctx, src.Stream)
	if err != nil {
		return 0, false
	}
	var head uint64
	for _, subj := range src.Subjects {
		m, err := stream.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return 0, false
		}
		head = max(head, m.Sequence)
	}
	return head, true
}

func (s *service) status(ctx context.Context, names []string, asJSON bool) error {
	all, err := s.statuses(ctx, names)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(s.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(all)
	}
	return printStatus(s.stdout, all)
}

func (s *service) statuses(ctx context.Context, names []string) ([]projector.Status, error) {
	var all []projector.Status
	for _, d := range s.selected(names) {
		st, err := s.readStatus(ctx, d)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.Name(), err)
		}
		all = append(all, st)
	}
	return all, nil
}

// watchInterval is how often status --watch reads the status again.
var watchInterval = 2 * time.Second

// watch prints the status every watchInterval until ctx ends: redrawn in
// place on a terminal, one table after another (each under a time stamp)
// otherwise. A failed read is shown and tried again.
func (s *service) watch(ctx context.Context, names []string) error {
	tty := isTerminal(s.stdout)
	for {
		var b strings.Builder
		fmt.Fprintf(&b, "%s  every %v  (Ctrl-C to stop)\n\n", time.Now().Format(time.RFC3339), watchInterval)
		all, err := s.statuses(ctx, names)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintf(&b, "status not read: %v\n", err)
		} else if err := printStatus(&b, all); err != nil {
			return err
		}
		if tty {
			// Home, each line cleared to its end, then the rest of the
			// screen: no flicker, no scrolling.
			out := "\033[H" + strings.ReplaceAll(b.String(), "\n", "\033[K\n") + "\033[J"
			fmt.Fprint(s.stdout, out)
		} else {
			fmt.Fprintln(s.stdout, b.String())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(watchInterval):
		}
	}
}

func printStatus(out io.Writer, all []projector.Status) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tSTATE\tSTORE\tPARTITIONS\tPOSITION\tHEAD\tLAG\tOWNERS\tPARKED")
	parked := 0
	for _, st := range all {
		store := st.Store
		if store == "" {
			store = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%d\n",
			st.Name, st.Kind, st.State, store, st.Partitions, st.Position, st.Head, st.Lag, owners(st.Owners), len(st.Parked))
		parked += len(st.Parked)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if parked == 0 {
		return nil
	}
	fmt.Fprintln(out, "\nParked partitions (fix the cause, then `projector retry <name> <partition>`, or `projector skip <name> <partition>`):")
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPARTITION\tSEQ\tEVENT TYPE\tATTEMPTS\tSINCE\tERROR")
	for _, st := range all {
		for _, r := range st.Parked {
			p := r.Parked
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s\n", st.Name, displayKey(r.Key), p.Seq, displayKey(p.EventType), p.Attempts,
				p.Since.Format(time.RFC3339), oneLine(p.Error))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, st := range all {
		for _, r := range st.Parked {
			if displayKey(r.Key) != r.Key {
				_, err := fmt.Fprintln(out, "\nA partition in double quotes is Go-quoted: pass its bytes unquoted, after --,"+
					" e.g. projector retry <name> -- $'wallet/\\x1b[0m' or -- -w-1.")
				return err
			}
		}
	}
	return nil
}

// owners formats replica slot counts as "r1:32 r2:32".
func owners(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s:%d", displayKey(k), m[k]))
	}
	return strings.Join(parts, " ")
}

// oneLine makes an error message one line of printable text: whitespace
// runs become one space, other control characters (ANSI escape sequences
// an event or a key may carry into an error) and invalid UTF-8 are shown
// escaped, and the result is cut at 200 bytes.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case !unicode.IsPrint(r) && r != ' ':
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
		if b.Len() > 200 {
			return b.String() + "…"
		}
	}
	return b.String()
}

// displayKey is how status prints a partition key, an event type or a
// replica name: as it is when it is printable text that cannot be taken
// for something else, Go-quoted (%q) otherwise — when it holds control
// characters (an ANSI escape sequence would reach the terminal), spaces,
// quotes, backslashes or invalid UTF-8, when it is empty, and when it starts
// with '-' (it would read as a flag).
func displayKey(s string) string {
	if s == "" || strings.HasPrefix(s, "-") || !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) || r == '"' || r == '\\' {
			return strconv.Quote(s)
		}
	}
	return s
}

// backfillPoll is how often backfill reads the status.
var backfillPoll = 500 * time.Millisecond

// backfill waits until the replicas have caught the projection up with its
// source, printing progress: redrawn in place on a terminal, a line every
// few seconds otherwise.
func (s *service) backfill(ctx context.Context, name string) error {
	d := s.def(name)
	tty := isTerminal(s.stdout)
	var lastLine time.Time
	var warnedOwners, warnedInit bool
	start := time.Now()
	var r rate
	for {
		st, err := s.readStatus(ctx, d)
		if err != nil {
			return err
		}
		switch st.State {
		case projector.StateActive:
		case projector.StatePaused:
			// A reset or delete is under way; it resumes or ends soon.
		case projector.StateDeleted:
			return fmt.Errorf("%s is deleted: `projector init %s` first", name, name)
		default:
			if !warnedInit {
				s.progress("%s is not initialised yet: waiting for a replica running it (`projector run`) …", name)
				warnedInit = true
			}
		}
		if st.State == projector.StateActive && len(st.Owners) == 0 && !warnedOwners && time.Since(start) > 2*s.cfg.Projector.LeaseTTL {
			s.progress("no replica owns %s's partitions: is `projector run` running with it?", name)
			warnedOwners = true
		}
		done := st.State == projector.StateActive && st.Lag == 0 && len(st.Owners) > 0
		r.add(time.Now(), st.Position)
		line := fmt.Sprintf("%s %s %s  position %d / head %d, lag %d, %s", name, bar(st.Position, st.Head, 24),
			percent(st.Position, st.Head), st.Position, st.Head, st.Lag, r.describe(st.Lag))
		switch {
		case tty:
			fmt.Fprintf(s.stdout, "\r\033[K%s", line)
			if done {
				fmt.Fprintln(s.stdout)
			}
		case done || time.Since(lastLine) >= 5*time.Second:
			fmt.Fprintln(s.stdout, line)
			lastLine = time.Now()
		}
		if done {
			if len(st.Parked) > 0 {
				s.progress("%s caught up, but %d partitions are parked: see `projector status %s`", name, len(st.Parked), name)
			} else {
				s.progress("%s caught up", name)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintln(s.stdout)
			}
			return ctx.Err()
		case <-time.After(backfillPoll):
		}
	}
}

// bar draws pos/head as [#####·····] of width cells.
func bar(pos, head uint64, width int) string {
	done := width
	if head > 0 {
		done = int(float64(width) * float64(min(pos, head)) / float64(head))
	}
	return "[" + strings.Repeat("#", done) + strings.Repeat("·", width-done) + "]"
}

// rate is how fast a position moves: the average over the last rateWindow.
type rate struct {
	at  []time.Time
	pos []uint64
}

const rateWindow = 10 * time.Second

func (r *rate) add(now time.Time, pos uint64) {
	r.at, r.pos = append(r.at, now), append(r.pos, pos)
	for len(r.at) > 2 && now.Sub(r.at[0]) > rateWindow {
		r.at, r.pos = r.at[1:], r.pos[1:]
	}
}

// perSecond is the rate; ok is false until two readings apart.
func (r *rate) perSecond() (float64, bool) {
	n := len(r.at)
	if n < 2 {
		return 0, false
	}
	dt := r.at[n-1].Sub(r.at[0]).Seconds()
	if dt <= 0 || r.pos[n-1] < r.pos[0] {
		return 0, false
	}
	return float64(r.pos[n-1]-r.pos[0]) / dt, true
}

// describe is "1520 msg/s, ETA 12s" (or "rate …" while unknown).
func (r *rate) describe(lag uint64) string {
	ps, ok := r.perSecond()
	switch {
	case !ok:
		return "rate …"
	case lag == 0:
		return fmt.Sprintf("%.0f msg/s", ps)
	case ps == 0:
		return "0 msg/s, ETA ∞"
	}
	return fmt.Sprintf("%.0f msg/s, ETA %v", ps, (time.Duration(float64(lag) / ps * float64(time.Second))).Round(time.Second))
}

func percent(pos, head uint64) string {
	if head == 0 {
		return "100%"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(min(pos, head))/float64(head))
}

// isTerminal reports whether w is a character device.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
