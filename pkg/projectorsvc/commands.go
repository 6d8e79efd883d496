package projectorsvc

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jetproj/jetproj/internal/opsserver"
)

// commands is the command line: every command once, with its usage lines,
// flags, arguments and what it does. The usage text, parseArgs and Main's
// dispatch all come from it.
var commands = []*cliCommand{
	{
		name:    "run",
		usage:   []usageLine{{"run", "run the projections (default); each initialises itself on first start"}},
		replica: true,
		run: func(ctx context.Context, s *service, _ command) error {
			err := s.run(ctx)
			if err != nil && ctx.Err() != nil {
				// Stopped while starting: a stop, not a failure.
				s.log.Info("projector stopped while starting", "error", err)
				return nil
			}
			return err
		},
	},
	{
		name: "status",
		usage: []usageLine{
			{"status [--json] [name…]", "show every projection (or the named ones): state, position, lag, owners, parked partitions"},
			{"status --watch [name…]", "the same every 2s, redrawn in place on a terminal, until Ctrl-C"},
		},
		more:        true,
		projections: allArgs,
		flags: []cliFlag{
			{name: "json", set: func(c *command, _ string) error { c.json = true; return nil }},
			{name: "watch", set: func(c *command, _ string) error { c.watch = true; return nil }},
		},
		check: func(c command) error {
			if c.json && c.watch {
				return fmt.Errorf("status: --json and --watch do not go together")
			}
			return nil
		},
		run: func(ctx context.Context, s *service, c command) error {
			if c.watch {
				return s.watch(ctx, c.args)
			}
			return s.status(ctx, c.args, c.json)
		},
	},
	{
		name:        "init",
		usage:       []usageLine{{"init <name>", "initialise a projection (create its read model); also revives a deleted one"}},
		required:    []string{argName},
		projections: 1,
		run:         func(ctx context.Context, s *service, c command) error { return s.init(ctx, c.args[0]) },
	},
	{
		name:        "reset",
		usage:       []usageLine{{"reset <name>", "clear the read model and positions; running replicas replay it from the start"}},
		required:    []string{argName},
		projections: 1,
		run:         func(ctx context.Context, s *service, c command) error { return s.reset(ctx, c.name, c.args[0]) },
	},
	{
		name: "rebuild",
		usage: []usageLine{
			{"rebuild <name>", "the same as reset; derived events are not emitted again during the replay"},
			{"rebuild <name> --partition <key>", "rebuild one partition (e.g. wallet/w-1) from its first event"},
		},
		required:    []string{argName},
		projections: 1,
		flags: []cliFlag{{name: "partition", value: true, set: func(c *command, v string) error {
			if v == "" {
				return fmt.Errorf("--partition needs a partition key such as wallet/w-1")
			}
			c.partition = v
			return nil
		}}},
		run: func(ctx context.Context, s *service, c command) error {
			if c.partition != "" {
				return s.partition(ctx, "rebuild", c.args[0], c.partition)
			}
			return s.reset(ctx, c.name, c.args[0])
		},
	},
	{
		name:        "backfill",
		usage:       []usageLine{{"backfill <name>", "wait until running replicas have caught the projection up (lag 0), with a progress bar, rate and ETA"}},
		required:    []string{argName},
		projections: 1,
		run:         func(ctx context.Context, s *service, c command) error { return s.backfill(ctx, c.args[0]) },
	},
	{
		name:        "delete",
		usage:       []usageLine{{"delete <name> --yes", "remove the read model, positions, leases and derived-event stream"}},
		required:    []string{argName},
		projections: 1,
		flags:       []cliFlag{{name: "yes", set: func(c *command, _ string) error { c.yes = true; return nil }}},
		confirm: func(c command) error {
			if !c.yes {
				return fmt.Errorf("delete removes %s's read model, positions, leases and derived-event stream; run it again with --yes to go ahead", c.args[0])
			}
			return nil
		},
		run: func(ctx context.Context, s *service, c command) error { return s.delete(ctx, c.args[0]) },
	},
	{
		name:        "retry",
		usage:       []usageLine{{"retry <name> <partition>", "retry a parked partition from its failing event"}},
		required:    []string{argName, argPartition},
		projections: 1,
		run: func(ctx context.Context, s *service, c command) error {
			return s.partition(ctx, c.name, c.args[0], c.args[1])
		},
	},
	{
		name:        "skip",
		usage:       []usageLine{{"skip <name> <partition>", "skip a parked partition's failing event and go on"}},
		required:    []string{argName, argPartition},
		projections: 1,
		run: func(ctx context.Context, s *service, c command) error {
			return s.partition(ctx, c.name, c.args[0], c.args[1])
		},
	},
	{
		name:        "start",
		usage:       []usageLine{{"start <name>", "start a projection deployed with ManualStart"}},
		required:    []string{argName},
		projections: 1,
		run:         func(ctx context.Context, s *service, c command) error { return s.start(ctx, c.args[0]) },
	},
	{
		name:        "live",
		usage:       []usageLine{{"live <name> on|off", "switch emission of derived events on (new events only) or off"}},
		required:    []string{argName, "on or off"},
		projections: 1,
		check: func(c command) error {
			if len(c.args) != 2 || (c.args[1] != "on" && c.args[1] != "off") {
				return fmt.Errorf("live needs a projection name and on or off")
			}
			return nil
		},
		run: func(ctx context.Context, s *service, c command) error {
			return s.setLive(ctx, c.args[0], c.args[1] == "on")
		},
	},
	{
		name: "wait",
		usage: []usageLine{{"wait <name> --position N [--timeout D]",
			"wait until the projection has applied the event at position N (default timeout 30s);\n" +
				"exit 0 when it has, 1 on timeout or a parked partition"}},
		required:    []string{argName},
		projections: 1,
		flags: []cliFlag{
			{name: "position", value: true, set: func(c *command, v string) error {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil || n <= 0 {
					return fmt.Errorf("--position needs a positive event store position, not %q", v)
				}
				c.position = n
				return nil
			}},
			{name: "timeout", value: true, set: func(c *command, v string) error {
				d, err := time.ParseDuration(v)
				if err != nil || d <= 0 {
					return fmt.Errorf("--timeout needs a positive duration such as 10s, not %q", v)
				}
				c.timeout = d
				return nil
			}},
		},
		check: func(c command) error {
			if c.position == 0 {
				return fmt.Errorf("wait needs --position N, the event store position to wait for")
			}
			return nil
		},
		run: func(ctx context.Context, s *service, c command) error {
			return s.wait(ctx, c.args[0], c.position, c.timeout)
		},
	},
	{
		name:  "healthcheck",
		usage: []usageLine{{"healthcheck", "exit 0 when the local replica's /readyz answers 200 (container health check)"}},
		standalone: func(ctx context.Context, environ map[string]string, _, stderr io.Writer) int {
			return opsserver.HealthcheckCommand(ctx, environ, stderr)
		},
	},
	{
		name:  "help",
		usage: []usageLine{{"help", "print this help"}},
		more:  true,
		standalone: func(_ context.Context, _ map[string]string, stdout, _ io.Writer) int {
			fmt.Fprint(stdout, usage)
			return 0
		},
	},
}

// cliCommand is one command of the command line.
type cliCommand struct {
	name string
	// usage is the command's lines in the usage text: a synopsis and what
	// it does.
	usage []usageLine
	// required says what each required argument is, for the error when
	// some are missing ("retry needs a projection name and a partition");
	// more allows any number of arguments after them.
	required []string
	more     bool
	// projections is how many leading arguments name projections of the
	// binary (allArgs: every one); Main checks them once it knows the
	// binary's projections.
	projections int
	flags       []cliFlag
	// check runs on the parsed command line, before its arguments are
	// counted: what the arguments and flags above cannot say.
	check func(command) error
	// confirm runs once the configuration is read, before any connection:
	// its error ends the command with exit code 2.
	confirm func(command) error
	// standalone commands run without configuration or connections and
	// return the exit code.
	standalone func(ctx context.Context, environ map[string]string, stdout, stderr io.Writer) int
	// replica marks the command that runs the projections: it may use the
	// embedded NATS server, logs its connection and ends quietly when
	// stopped while starting.
	replica bool
	// run does the command once connected.
	run func(ctx context.Context, s *service, c command) error
}

// usageLine is a line of the usage text: a synopsis and what it does; a
// summary of several lines continues under the first.
type usageLine struct{ synopsis, summary string }

// cliFlag is a flag of a command: --name, -name, or with value, --name v
// and --name=v.
type cliFlag struct {
	name  string
	value bool
	set   func(c *command, value string) error
}

// What commands' arguments are, in their errors.
const (
	argName      = "a projection name"
	argPartition = "a partition"
)

// allArgs: every argument names a projection.
const allArgs = -1

// command is a parsed command line.
type command struct {
	*cliCommand
	args      []string
	json      bool
	watch     bool
	yes       bool
	partition string
	position  int64         // wait
	timeout   time.Duration // wait
}

// lookup returns the command called name, nil when there is none.
func lookup(name string) *cliCommand {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (c *cliCommand) flag(name string) *cliFlag {
	for i := range c.flags {
		if c.flags[i].name == name {
			return &c.flags[i]
		}
	}
	return nil
}

// projectionArgs returns the arguments of c that name projections.
func (c command) projectionArgs() []string {
	if c.projections == allArgs || c.projections > len(c.args) {
		return c.args
	}
	return c.args[:c.projections]
}

// parseArgs reads the command and its flags, which may come before or after
// the positional arguments ("--flag", "-flag", "--flag=value"). -h or
// --help among the flags, or help first, ask for the usage text.
func parseArgs(args []string) (command, error) {
	name := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	c := command{cliCommand: lookup(name)}
	switch {
	case c.cliCommand == nil:
		return c, fmt.Errorf("unknown command %q", name)
	case name == "help":
		return c, nil // whatever follows
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			c.args = append(c.args, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			c.args = append(c.args, a)
			continue
		}
		fname, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if fname == "h" || fname == "help" {
			return command{cliCommand: lookup("help")}, nil
		}
		f := c.flag(fname)
		if f == nil {
			return c, fmt.Errorf("%s: unknown flag %s", c.name, a)
		}
		switch {
		case f.value && !hasValue:
			if i+1 >= len(args) {
				return c, fmt.Errorf("%s: flag --%s needs a value", c.name, fname)
			}
			i++
			value = args[i]
		case !f.value && hasValue:
			return c, fmt.Errorf("%s: flag --%s takes no value", c.name, fname)
		}
		if err := f.set(&c, value); err != nil {
			return c, fmt.Errorf("%s: %w", c.name, err)
		}
	}
	if c.check != nil {
		if err := c.check(c); err != nil {
			return c, err
		}
	}
	switch n := len(c.args); {
	case n < len(c.required):
		return c, fmt.Errorf("%s needs %s", c.name, strings.Join(c.required, " and "))
	case n > len(c.required) && !c.more:
		return c, fmt.Errorf("%s: unexpected arguments %q", c.name, c.args[len(c.required):])
	}
	return c, nil
}

// usage is the text of `projector help`, made from commands.
var usage string

func init() { usage = usageText(commands) }

// usageText lays the commands' usage lines out in two columns; a synopsis
// too wide for the first has its summary on the lines below.
func usageText(cmds []*cliCommand) string {
	const indent, width = "  ", 34
	var b strings.Builder
	b.WriteString("Usage: projector [command] [arguments]\n\nCommands:\n")
	for _, c := range cmds {
		for _, u := range c.usage {
			lines := strings.Split(u.summary, "\n")
			if utf8.RuneCountInString(u.synopsis) < width-1 {
				fmt.Fprintf(&b, "%s%-*s%s\n", indent, width, u.synopsis, lines[0])
				lines = lines[1:]
			} else {
				fmt.Fprintf(&b, "%s%s\n", indent, u.synopsis)
			}
			for _, l := range lines {
				fmt.Fprintf(&b, "%s%s%s\n", indent, strings.Repeat(" ", width), l)
			}
		}
	}
	b.WriteString(`
A partition is "<aggregate_type>/<aggregate_id>" (e.g. wallet/w-1), or
"global" for a global projection. Configuration comes from the environment;
see README.md. Exit codes: 0 done, 1 failed, 2 bad usage or configuration.
`)
	return b.String()
}
