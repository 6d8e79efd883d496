package projectorsvc

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// The usage text is made from the table of commands: it must stay what
// operators and scripts know (testdata/usage.txt) and list every command
// with each of its usage lines.
func TestUsageListsEveryCommand(t *testing.T) {
	want, err := os.ReadFile("testdata/usage.txt")
	if err != nil {
		t.Fatal(err)
	}
	if usage != string(want) {
		t.Errorf("usage text changed; got:\n%s\nwant (testdata/usage.txt):\n%s", usage, want)
	}
	lines := strings.Split(usage, "\n")
	for _, c := range commands {
		if len(c.usage) == 0 {
			t.Errorf("%s: no usage line", c.name)
		}
		for _, u := range c.usage {
			if u.synopsis != c.name && !strings.HasPrefix(u.synopsis, c.name+" ") {
				t.Errorf("%s: usage line %q does not start with the command's name", c.name, u.synopsis)
			}
			if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, "  "+u.synopsis) }) {
				t.Errorf("%s: usage text lacks %q", c.name, u.synopsis)
			}
		}
		for _, f := range c.flags {
			if !slices.ContainsFunc(c.usage, func(u usageLine) bool { return strings.Contains(u.synopsis, "--"+f.name) }) {
				t.Errorf("%s: no usage line shows --%s", c.name, f.name)
			}
		}
		if c.run == nil && c.standalone == nil {
			t.Errorf("%s: nothing to run", c.name)
		}
		if lookup(c.name) != c {
			t.Errorf("%s: declared twice", c.name)
		}
	}
}

// valid is a command line each command accepts.
func valid(c *cliCommand) []string {
	args := []string{c.name}
	for range c.required {
		args = append(args, "x")
	}
	switch c.name {
	case "live":
		args[2] = "on"
	case "wait":
		args = append(args, "--position", "1")
	case "delete":
		args = append(args, "--yes")
	}
	return args
}

// Every command parses its own valid line; a line with an argument too
// few or too many fails with an error that names the command.
func TestArityErrorsNameTheCommand(t *testing.T) {
	for _, c := range commands {
		args := valid(c)
		got, err := parseArgs(args)
		if err != nil || got.cliCommand != c {
			t.Errorf("%q: %v (command %v)", args, err, got.cliCommand)
			continue
		}
		if c.name == "help" {
			continue // takes anything
		}
		var bad [][]string
		if n := len(c.required); n > 0 {
			bad = append(bad, slices.Delete(slices.Clone(args), n, n+1)) // drop the last argument
		}
		if !c.more {
			bad = append(bad, slices.Insert(slices.Clone(args), len(c.required)+1, "extra"))
		}
		for _, line := range bad {
			_, err := parseArgs(line)
			if err == nil {
				t.Errorf("%q: accepted", line)
				continue
			}
			if msg := err.Error(); !strings.HasPrefix(msg, c.name+" needs ") && !strings.HasPrefix(msg, c.name+": unexpected arguments") {
				t.Errorf("%q: %q does not name the command and what it needs", line, msg)
			}
		}
	}
}
