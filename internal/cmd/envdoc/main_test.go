package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readme is the project's README, relative to this package.
const readme = "../../../README.md"

// TestREADMEUpToDate fails when the tables of README.md differ from the
// configuration structs. Fix it with: go run ./internal/cmd/envdoc -w README.md
func TestREADMEUpToDate(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"-check", readme}, &stderr, &stderr); code != 0 {
		t.Fatalf("envdoc -check %s: exit %d\n%s", readme, code, stderr.String())
	}
}

func TestWriteThenCheck(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "doc.md")
	doc := "# Config\n"
	for name := range sections {
		doc += "\n<!-- envdoc:" + name + " -->\n<!-- /envdoc:" + name + " -->\n"
	}
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errs bytes.Buffer
	if code := run([]string{"-check", path}, &out, &errs); code != 1 || !strings.Contains(errs.String(), "section nats is stale") {
		t.Fatalf("check before write: exit %d\n%s", code, errs.String())
	}
	errs.Reset()
	if code := run([]string{"-w", path}, &out, &errs); code != 0 {
		t.Fatalf("write: exit %d\n%s", code, errs.String())
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), "| `NATS_URL` |") {
		t.Fatalf("written:\n%s", b)
	}
	errs.Reset()
	if code := run([]string{"-check", path}, &out, &errs); code != 0 {
		t.Fatalf("check after write: exit %d\n%s", code, errs.String())
	}
}

func TestCheckMissingSectionAndFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "doc.md")
	if err := os.WriteFile(path, []byte("# No markers\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errs bytes.Buffer
	if code := run([]string{"-check", path}, &out, &errs); code != 1 || !strings.Contains(errs.String(), "section nats is missing") {
		t.Fatalf("exit %d\n%s", code, errs.String())
	}
	errs.Reset()
	if code := run([]string{"-check", filepath.Join(t.TempDir(), "nope.md")}, &out, &errs); code != 1 {
		t.Fatalf("missing file: exit %d\n%s", code, errs.String())
	}
}

func TestPrint(t *testing.T) {
	t.Parallel()
	var out, errs bytes.Buffer
	if code := run(nil, &out, &errs); code != 0 || !strings.Contains(out.String(), "<!-- envdoc:nats -->\n\n| Variable |") {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errs.String())
	}
	if code := run([]string{"nope"}, &out, &errs); code != 1 {
		t.Fatalf("unknown section: exit %d", code)
	}
	if code := run([]string{"-w", "a", "-check", "b"}, &out, &errs); code != 2 {
		t.Fatalf("both flags: exit %d", code)
	}
}
