package envdoc_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/envdoc"
	"github.com/jetproj/jetproj/internal/natsconn"
)

type store struct {
	URL string `env:"URL,required" doc:"Connection string | with a pipe."`
}

type sample struct {
	Batch    int               `env:"X_BATCH" envDefault:"500" doc:"Rows per query"`
	Poll     time.Duration     `env:"X_POLL" envDefault:"1s" doc:"Fallback poll interval.\n  Multi-line."`
	Subjects []string          `env:"X_SUBJECTS" envSeparator:";"`
	Labels   map[string]string `env:"X_LABELS" doc:"Extra labels."`
	Secret   string            `env:"X_SECRET_FILE,file,notEmpty" doc:"Signing key."`
	Empty    string            `env:"X_EMPTY" envDefault:""`
	Store    store             `envPrefix:"X_STORE_"`
	Shards   []store           `envPrefix:"X_SHARD"`
	Skipped  string            `env:"-"`
	Untagged string
}

func TestMarkdown(t *testing.T) {
	t.Parallel()
	got, err := envdoc.Markdown(&sample{})
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"| Variable | Default | Required | Description |",
		"|---|---|---|---|",
		"| `X_BATCH` | `500` |  | Rows per query |",
		"| `X_POLL` | `1s` |  | Fallback poll interval. Multi-line. |",
		"| `X_SUBJECTS` |  |  | List separated by `;`. |",
		"| `X_LABELS` |  |  | Extra labels. Pairs `key:value` separated by `,`. |",
		"| `X_SECRET_FILE` |  | yes | Signing key. The value is the path of a file that holds the setting. Must not be empty. |",
		"| `X_EMPTY` | `\"\"` |  |  |",
		"| `X_STORE_URL` |  | yes | Connection string \\| with a pipe. |",
		"| `X_SHARD_{n}_URL` |  | yes | Connection string \\| with a pipe. `{n}` is 0, 1, 2 … for each entry. |",
		"",
	}, "\n")
	if got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}

	if _, err := envdoc.Markdown(struct{ A int }{}); err == nil {
		t.Fatal("struct without variables accepted")
	}
	if _, err := envdoc.Markdown("x"); err == nil {
		t.Fatal("string accepted")
	}
}

func TestMarkdownNATS(t *testing.T) {
	t.Parallel()
	got, err := envdoc.Markdown(natsconn.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range []string{"| `NATS_URL` |  |  | Server URL(s)", "| `NATS_EMBEDDED_DIR` | `.data/nats` |", "| `NATS_EMBEDDED_PORT` | `4222` |"} {
		if !strings.Contains(got, row) {
			t.Errorf("table lacks %q:\n%s", row, got)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(got), "\n")[2:] {
		if strings.HasSuffix(line, "|  |") {
			t.Errorf("undocumented variable: %s", line)
		}
	}
}

var sections = map[string]any{"sample": sample{}, "store": store{}}

func TestRewriteAndCheck(t *testing.T) {
	t.Parallel()
	doc := "# Settings\n\nIntro.\n\n<!-- envdoc:store -->\nold table\n<!-- /envdoc:store -->\n\nBetween.\n\n<!--envdoc:sample--><!--/envdoc:sample-->\nEnd.\n"

	stale, missing, err := envdoc.Check(doc, sections)
	if err != nil || !slices.Equal(stale, []string{"sample", "store"}) || missing != nil {
		t.Fatalf("Check(old) = %q, %q, %v", stale, missing, err)
	}

	got, err := envdoc.Rewrite(doc, sections)
	if err != nil {
		t.Fatal(err)
	}
	storeTable, _ := envdoc.Markdown(store{})
	sampleTable, _ := envdoc.Markdown(sample{})
	want := "# Settings\n\nIntro.\n\n<!-- envdoc:store -->\n\n" + storeTable + "\n<!-- /envdoc:store -->\n\nBetween.\n\n" +
		"<!--envdoc:sample-->\n\n" + sampleTable + "\n<!--/envdoc:sample-->\nEnd.\n"
	if got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}

	again, err := envdoc.Rewrite(got, sections)
	if err != nil || again != got {
		t.Fatalf("Rewrite is not idempotent (%v):\n%s", err, again)
	}
	stale, missing, err = envdoc.Check(got, sections)
	if err != nil || stale != nil || missing != nil {
		t.Fatalf("Check(new) = %q, %q, %v", stale, missing, err)
	}

	// A section without markers is missing; the rest is still checked.
	stale, missing, err = envdoc.Check(got, map[string]any{"store": store{}, "sample": sample{}, "nats": natsconn.Config{}})
	if err != nil || stale != nil || !slices.Equal(missing, []string{"nats"}) {
		t.Fatalf("Check(extra section) = %q, %q, %v", stale, missing, err)
	}
}

func TestMarkerErrors(t *testing.T) {
	t.Parallel()
	for name, doc := range map[string]string{
		"unknown section": "<!-- envdoc:nope -->\n<!-- /envdoc:nope -->\n",
		"not closed":      "a\n<!-- envdoc:store -->\nb\n",
		"close mismatch":  "<!-- envdoc:store -->\n<!-- /envdoc:sample -->\n",
		"stray close":     "<!-- /envdoc:store -->\n",
		"nested":          "<!-- envdoc:store -->\n<!-- envdoc:sample -->\n<!-- /envdoc:sample -->\n<!-- /envdoc:store -->\n",
	} {
		if _, err := envdoc.Rewrite(doc, sections); !errors.Is(err, envdoc.ErrMarkers) {
			t.Errorf("%s: Rewrite err = %v, want ErrMarkers", name, err)
		}
		if _, _, err := envdoc.Check(doc, sections); !errors.Is(err, envdoc.ErrMarkers) {
			t.Errorf("%s: Check err = %v, want ErrMarkers", name, err)
		}
	}
	_, err := envdoc.Rewrite("x\n<!-- envdoc:store -->\n", sections)
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("err = %v, want a line number", err)
	}
}
