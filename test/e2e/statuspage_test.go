package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/internal/statuspage"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projector"
)

// chromiumPath finds Debian's chromium (scripts/ensure-chromium.sh installs
// it, `make deps` runs that). Without it the browser test is skipped, with
// the reason, except under CI, where it fails.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no chromium on this machine: run scripts/ensure-chromium.sh (as root it installs Debian's chromium) or set CHROMIUM"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// artifactsDir is where the browser test writes its screenshots:
// $TEST_ARTIFACTS, or test/e2e/out (ignored by git).
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("TEST_ARTIFACTS")
	if dir == "" {
		root, err := moduleRoot()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(root, "test", "e2e", "out")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser is a headless Chromium with one tab, and what its console said.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu       sync.Mutex
	problems []string // console errors, exceptions, failed loads
}

// startBrowser starts headless Chromium with the flags this machine needs
// (no sandbox as root, no background networking: the network is closed)
// and a fresh profile; it is closed when the test ends.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	b := &browser{t: t, ctx: ctx}
	// The first Run starts the browser; no timeout on it (it would end the
	// browser), the test's deadline and the cleanup end it.
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	console := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range console {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException {
				b.mu.Lock()
				b.problems = append(b.problems, fmt.Sprintf("%s: %s (%s:%d)", m.Type, m.Text, m.URL, m.Line+1))
				b.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		<-done
	})
	return b
}

// do runs actions with a deadline, failing the test on error.
func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression into a T.
func eval[T any](b *browser, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr))
}

// noProblems fails the test if the page logged errors.
func (b *browser) noProblems() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.problems) > 0 {
		b.t.Fatalf("the page logged %d errors:\n%s", len(b.problems), strings.Join(b.problems, "\n"))
	}
}

func (b *browser) screenshot(dir, name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
}

// pageRows reads the rendered rows of a table: by the row's key attribute,
// each data-field cell's text.
func (b *browser) pageRows(table, key string) (map[string]map[string]string, error) {
	return eval[map[string]map[string]string](b, fmt.Sprintf(`(() => {
		const out = {};
		document.querySelectorAll(%q).forEach((tr) => {
			const o = {};
			tr.querySelectorAll("td[data-field]").forEach((td) => { o[td.dataset.field] = td.textContent; });
			out[tr.getAttribute(%q)] = o;
		});
		return out;
	})()`, table+" tbody tr["+key+"]", key))
}

// chartState is a chart's number of points and its polylines.
type chartState struct {
	Points int     `json:"points"`
	Max    float64 `json:"max"`
	Lines  string  `json:"lines"`
}

func (b *browser) chart(id string) (chartState, error) {
	return eval[chartState](b, fmt.Sprintf(`(() => {
		const svg = document.querySelector('svg[data-chart=%q]');
		if (!svg) return {points: 0, max: 0, lines: ""};
		return {points: +svg.dataset.points, max: +svg.dataset.max,
			lines: [...svg.querySelectorAll("polyline")].map((p) => p.getAttribute("points")).join("|")};
	})()`, id))
}

// postAction posts an action to a page's /actions as a script would.
func postAction(t *testing.T, addr, token string, a statuspage.Action) (int, string) {
	t.Helper()
	body, _ := json.Marshal(a)
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+statuspage.ActionsPath, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.String()
}

// statusJSON reads a page's /status.json.
func statusJSON(addr string) (statuspage.View, error) {
	var v statuspage.View
	code, body, err := httpGet(addr, statuspage.StatusPath)
	if err != nil {
		return v, err
	}
	if code != http.StatusOK {
		return v, fmt.Errorf("%s: %d %s", statuspage.StatusPath, code, body)
	}
	return v, json.Unmarshal([]byte(body), &v)
}

// feederStatusJSON runs `feeder status --json`.
func feederStatusJSON(t *testing.T, env map[string]string) feeder.Report {
	t.Helper()
	r := runFeeder(t, env, "status", "--json")
	if r.code != 0 {
		t.Fatalf("feeder status --json: exit %d\n%s", r.code, r.stderr)
	}
	var rep feeder.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("feeder status --json: %v\n%s", err, r.stdout)
	}
	return rep
}

// ownersText is how the page writes owners, as `projector status` does.
func ownersText(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+":"+strconv.Itoa(m[k]))
	}
	return strings.Join(parts, " ")
}

// TestStatusPageInBrowser drives the status page in headless Chromium
// against a running pipeline: a nats-server, a feeder, two projector
// replicas of wallet_balance (one with OPS_ADMIN=on, one read-only) and an
// emitter, on real PostgreSQL. The page loads without console errors; its
// numbers equal `projector status --json` and `feeder status --json`; its
// lag and throughput charts move while events are written; a poisoned
// wallet's partition appears parked, with its failing event, attempts and
// error; the read-only replica's page shows it without buttons and its
// POST /actions answers 403; on the admin page, after the fix, the retry
// button (token, confirmation) clears it, and the action is listed with the
// token's name. Screenshots go to test/e2e/out (or $TEST_ARTIFACTS).
func TestStatusPageInBrowser(t *testing.T) {
	chromiumPath(t) // skip early, before starting anything
	t.Cleanup(http.DefaultClient.CloseIdleConnections)
	ctx := context.Background()
	out := artifactsDir(t)
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)

	tokenBytes := make([]byte, 16)
	_, _ = rand.Read(tokenBytes)
	token := hex.EncodeToString(tokenBytes)
	tokenFile := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokenFile, []byte("# operators\nalice:"+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fast := func(env map[string]string) map[string]string {
		env["OPS_STATUS_INTERVAL"] = "1s"
		return env
	}
	fenv := fast(feederEnv(dbURL, ns.URL(), "f1"))
	startFeeder(t, "feeder", fenv)
	adminAddr, roAddr := opsAddr(t), opsAddr(t)
	admin := fast(pipelineEnv(dbURL, ns.URL(), "p-admin", examples.WalletBalanceName))
	admin["OPS_ADDR"], admin["OPS_ADMIN"], admin["OPS_ADMIN_TOKEN_FILE"] = adminAddr, "on", tokenFile
	admin["PROJECTOR_MAX_ATTEMPTS"], admin["PROJECTOR_BACKOFF_MIN"] = "3", "50ms"
	ro := fast(pipelineEnv(dbURL, ns.URL(), "p-readonly", examples.WalletBalanceName))
	ro["OPS_ADDR"] = roAddr
	ro["PROJECTOR_MAX_ATTEMPTS"], ro["PROJECTOR_BACKOFF_MIN"] = "3", "50ms"
	pa := startProjector(t, "projector p-admin", admin)
	pr := startProjector(t, "projector p-readonly", ro)
	startEmitter(t, "emitter", fast(emitterEnv(dbURL, ns.URL(), "e1")))
	alive := func() {
		for _, p := range []*proc{pa, pr} {
			if p.exited() {
				t.Fatalf("%s exited: %s", p.name, p.state)
			}
		}
	}

	// The pipeline runs: the read model exists and the page knows it.
	devtest.Eventually(t, 30*time.Second, func() error {
		alive()
		v, err := statusJSON(adminAddr)
		if err != nil {
			return err
		}
		if len(v.Projections) != 1 || v.Projections[0].State != projector.StateActive || len(v.Feeders) != 1 || len(v.Emitters) != 1 {
			return fmt.Errorf("page not complete yet: %d projections, %d feeders, %d emitters", len(v.Projections), len(v.Feeders), len(v.Emitters))
		}
		return nil
	})

	b := startBrowser(t)
	b.do("open the admin replica's page", chromedp.EmulateViewport(1400, 1000), chromedp.Navigate("http://"+adminAddr+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#projections tbody tr[data-projection="wallet_balance"]`)))

	// While events are written, the charts move: points are added, the
	// feeder's and the projection's throughput are above zero.
	w := startWriters(t, pool, 4, 20*time.Millisecond, testSeed(t))
	lag0, err := b.chart("lag/wallet_balance")
	if err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		alive()
		lag, err := b.chart("lag/wallet_balance")
		if err != nil {
			return err
		}
		rates, err := b.chart("rates")
		if err != nil {
			return err
		}
		if lag.Points < lag0.Points+3 || lag.Lines == lag0.Lines {
			return fmt.Errorf("lag chart still at %d points (from %d)", lag.Points, lag0.Points)
		}
		if rates.Max <= 0 {
			return errors.New("events/s chart still flat at 0")
		}
		return nil
	})
	b.screenshot(out, "statuspage-live.png")
	w.halt()
	t.Logf("%d events written while the charts moved", w.committed.Load())

	// Idle: the page's numbers equal the status commands'.
	devtest.Eventually(t, 30*time.Second, func() error {
		alive()
		cli := projectorStatusJSON(t, admin)[0]
		rep := feederStatusJSON(t, fenv)
		rows, err := b.pageRows("#projections", "data-projection")
		if err != nil {
			return err
		}
		row := rows[examples.WalletBalanceName]
		want := map[string]string{
			"kind": cli.Kind, "state": cli.State, "store": cli.Store, "partitions": strconv.Itoa(cli.Partitions),
			"position": strconv.FormatUint(cli.Position, 10), "head": strconv.FormatUint(cli.Head, 10),
			"lag": strconv.FormatUint(cli.Lag, 10), "owners": ownersText(cli.Owners), "parked": strconv.Itoa(len(cli.Parked)),
		}
		for k, v := range want {
			if row[k] != v {
				return fmt.Errorf("page %s = %q, projector status --json %q", k, row[k], v)
			}
		}
		if cli.Lag != 0 || len(cli.Owners) != 2 {
			return fmt.Errorf("not settled: lag %d, owners %v", cli.Lag, cli.Owners)
		}
		frows, err := b.pageRows("#feeders", "data-feeder")
		if err != nil {
			return err
		}
		f := frows["events"]
		if rep.Status == nil || f["position"] != strconv.FormatInt(rep.Status.Position, 10) || f["active"] != rep.Status.Instance {
			return fmt.Errorf("page feeder %v, feeder status --json %+v", f, rep.Status)
		}
		if f["lag"] != "0" || f["store_head"] != f["position"] {
			return fmt.Errorf("feeder not settled on the page: %v", f)
		}
		// /status.json carries the very reports the commands print.
		v, err := statusJSON(adminAddr)
		if err != nil {
			return err
		}
		if got := v.Projections[0].Status; !reflect.DeepEqual(got, cli) {
			return fmt.Errorf("status.json projection %+v, projector status --json %+v", got, cli)
		}
		if got := v.Feeders[0].Report; got == nil || !reflect.DeepEqual(*got, rep) {
			return fmt.Errorf("status.json feeder report %+v, feeder status --json %+v", got, rep)
		}
		return nil
	})

	// A poisoned wallet: its partition is parked, and the page shows it.
	const wallet = "poison-page"
	key := "wallet/" + wallet
	sqlExec(t, pool, `CREATE FUNCTION poison_page() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.wallet_id = 'poison-page' THEN
    RAISE EXCEPTION 'poisoned wallet %', NEW.wallet_id;
  END IF;
  RETURN NEW;
END $$`)
	sqlExec(t, pool, `CREATE TRIGGER poison_page BEFORE INSERT OR UPDATE ON wallet_balance FOR EACH ROW EXECUTE FUNCTION poison_page()`)
	res := appendWallet(t, pool, wallet, eventstore.ExpectNoStream, opened(wallet), added(100))
	parkedSel := fmt.Sprintf(`#parked tbody tr[data-partition=%q]`, key)
	var parked map[string]string
	devtest.Eventually(t, 30*time.Second, func() error {
		alive()
		rows, err := b.pageRows("#parked", "data-partition")
		if err != nil {
			return err
		}
		if parked = rows[key]; parked == nil {
			return fmt.Errorf("%s not shown parked yet", key)
		}
		return nil
	})
	cli := findParked(projectorStatusJSON(t, admin), key)
	if cli == nil {
		t.Fatalf("the page shows %s parked, projector status does not", key)
	}
	if parked["seq"] != strconv.FormatUint(cli.Parked.Seq, 10) || parked["event_type"] != cli.Parked.EventType ||
		parked["attempts"] != strconv.Itoa(cli.Parked.Attempts) || parked["attempts"] != "3" ||
		parked["position"] != strconv.FormatInt(res.FirstPosition, 10) || !strings.Contains(parked["error"], "poisoned wallet poison-page") {
		t.Fatalf("page shows %s parked as %v; projector status: %+v (position %d)", key, parked, cli.Parked, res.FirstPosition)
	}
	buttons, err := eval[int](b, `document.querySelectorAll('`+parkedSel+` button[data-action]').length`)
	if err != nil || buttons != 2 {
		t.Fatalf("admin page: %d action buttons on the parked partition (%v), want retry and skip", buttons, err)
	}
	b.screenshot(out, "statuspage-parked.png")

	// The read-only replica's page shows the same, without buttons, and
	// refuses the action.
	b.do("open the read-only replica's page", chromedp.Navigate("http://"+roAddr+"/"),
		chromedp.WaitVisible(chromedp.CSS(parkedSel)))
	if buttons, err = eval[int](b, `document.querySelectorAll('button[data-action]').length`); err != nil || buttons != 0 {
		t.Fatalf("read-only page: %d action buttons (%v), want none", buttons, err)
	}
	if tokenShown, err := eval[bool](b, `!document.querySelector('#admin').hidden`); err != nil || tokenShown {
		t.Fatalf("read-only page shows the token field (%v)", err)
	}
	b.screenshot(out, "statuspage-readonly.png")
	retry := statuspage.Action{Op: "retry", Projection: examples.WalletBalanceName, Partition: key}
	if code, body := postAction(t, roAddr, token, retry); code != http.StatusForbidden {
		t.Fatalf("read-only replica: POST /actions answered %d %s, want 403", code, body)
	}
	if code, body := postAction(t, adminAddr, "not-the-token-0123456789", retry); code != http.StatusUnauthorized {
		t.Fatalf("admin replica, wrong token: POST /actions answered %d %s, want 401", code, body)
	}
	if rec := findParked(projectorStatusJSON(t, admin), key); rec == nil {
		t.Fatalf("%s no longer parked after refused actions", key)
	}

	// Fixed: the retry button, with the token and a confirmation, clears it.
	sqlExec(t, pool, `DROP TRIGGER poison_page ON wallet_balance`)
	b.do("open the admin page and retry", chromedp.Navigate("http://"+adminAddr+"/"),
		chromedp.WaitVisible(chromedp.CSS(parkedSel+` button[data-action="retry"]`)),
		chromedp.SendKeys(chromedp.CSS("#token"), token))
	// Rows are redrawn at every poll: click in one script, not by node.
	if _, err := eval[bool](b, `document.querySelector('`+parkedSel+` button[data-action="retry"]').click(), true`); err != nil {
		t.Fatal(err)
	}
	b.do("wait for the confirmation", chromedp.WaitVisible(chromedp.CSS("#confirm-ok")))
	question, err := eval[string](b, `document.querySelector('#confirm-text').textContent`)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(question, key) {
		t.Fatalf("confirmation asks %q, want it to name %s", question, key)
	}
	b.screenshot(out, "statuspage-confirm.png")
	b.do("click confirm", chromedp.Click(chromedp.CSS("#confirm-ok")))
	devtest.Eventually(t, 30*time.Second, func() error {
		alive()
		if err := noneParked(t, admin); err != nil {
			return err
		}
		n, err := eval[int](b, `document.querySelectorAll('`+parkedSel+`').length`)
		if err != nil {
			return err
		}
		if n != 0 {
			return fmt.Errorf("%s still shown parked", key)
		}
		logged, err := eval[string](b, `document.querySelector('#actions tbody').textContent`)
		if err != nil {
			return err
		}
		if !strings.Contains(logged, "alice") || !strings.Contains(logged, "retry") || !strings.Contains(logged, key) {
			return fmt.Errorf("action log %q does not show alice's retry of %s", logged, key)
		}
		return nil
	})
	devtest.Eventually(t, 30*time.Second, func() error { return checkWallets(ctx, pool, nil) })
	if !pa.logged("admin action") {
		t.Fatal("the admin replica did not log the action")
	}
	b.screenshot(out, "statuspage-retried.png")
	b.noProblems()
}
