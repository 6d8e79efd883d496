// Command envdoc generates the tables of environment variables in the
// documentation from the configuration structs of the services, so that the
// two cannot drift apart.
//
// Usage:
//
//	envdoc [SECTION…]      print the tables of the sections (default: all)
//	envdoc -w FILE         rewrite every marked region of FILE
//	envdoc -check FILE     exit 1 if a region of FILE is stale or a section has none
//
// A region is the text between <!-- envdoc:NAME --> and <!-- /envdoc:NAME -->;
// NAME is a key of sections below.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"

	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/internal/envdoc"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/internal/natsconn"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/internal/pgpool"
	"github.com/jetproj/jetproj/internal/process"
	"github.com/jetproj/jetproj/internal/statuspage"
	"github.com/jetproj/jetproj/pkg/projectorsvc"
)

// sections maps the section names used in markers to configuration structs.
// Adding a service's configuration to the documentation is one line here.
var sections = map[string]any{
	"nats":       natsconn.Config{},
	"database":   pgpool.Config{},
	"logging":    process.LogConfig{},
	"ops":        opsserver.Config{},
	"feeder":     feeder.Config{},
	"projector":  projectorsvc.Settings{},
	"emitter":    emitter.Config{},
	"statuspage": statuspage.Config{},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command and returns its exit code.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("envdoc", flag.ContinueOnError)
	fs.SetOutput(stderr)
	write := fs.String("w", "", "rewrite the envdoc regions of `FILE` in place")
	check := fs.String("check", "", "report the stale or missing envdoc regions of `FILE` and exit 1 if there are any")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: envdoc [-w FILE | -check FILE | SECTION…]\nsections: %v\n", slices.Sorted(maps.Keys(sections)))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if (*write != "" && *check != "") || ((*write != "" || *check != "") && fs.NArg() > 0) {
		fs.Usage()
		return 2
	}

	var err error
	switch {
	case *write != "":
		err = rewrite(*write, stderr)
	case *check != "":
		err = checkFile(*check, stderr)
	default:
		err = printSections(fs.Args(), stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "envdoc:", err)
		return 1
	}
	return 0
}

func rewrite(path string, stderr io.Writer) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	out, err := envdoc.Rewrite(string(doc), sections)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if out != string(doc) {
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(out), fi.Mode().Perm()); err != nil {
			return err
		}
	}
	_, missing, err := envdoc.Check(out, sections)
	if err != nil {
		return err
	}
	for _, name := range missing {
		fmt.Fprintf(stderr, "envdoc: %s: warning: section %s has no region (add <!-- envdoc:%s --> <!-- /envdoc:%s -->)\n", path, name, name, name)
	}
	return nil
}

var errOutdated = errors.New("documentation is out of date")

func checkFile(path string, stderr io.Writer) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	stale, missing, err := envdoc.Check(string(doc), sections)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, name := range stale {
		fmt.Fprintf(stderr, "%s: section %s is stale (run: go run ./internal/cmd/envdoc -w %s)\n", path, name, path)
	}
	for _, name := range missing {
		fmt.Fprintf(stderr, "%s: section %s is missing (add <!-- envdoc:%s --> <!-- /envdoc:%s -->)\n", path, name, name, name)
	}
	if len(stale)+len(missing) > 0 {
		return fmt.Errorf("%s: %w", path, errOutdated)
	}
	return nil
}

func printSections(names []string, stdout io.Writer) error {
	if len(names) == 0 {
		names = slices.Sorted(maps.Keys(sections))
	}
	for i, name := range names {
		v, ok := sections[name]
		if !ok {
			return fmt.Errorf("unknown section %q (known: %v)", name, slices.Sorted(maps.Keys(sections)))
		}
		table, err := envdoc.Markdown(v)
		if err != nil {
			return fmt.Errorf("section %s: %w", name, err)
		}
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "<!-- envdoc:%s -->\n\n%s\n<!-- /envdoc:%s -->\n", name, table, name)
	}
	return nil
}
