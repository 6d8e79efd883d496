// Package config loads a service's settings from environment variables into
// a plain struct and fails fast with every problem at once.
//
// A configuration is a struct whose fields carry the tags of
// github.com/caarlos0/env/v11 (env, envDefault, envPrefix, envSeparator and
// the required, notEmpty and file options) plus a doc tag that describes the
// setting for the generated documentation (see internal/envdoc):
//
//	type Config struct {
//		BatchSize int           `env:"FEEDER_BATCH_SIZE" envDefault:"500" doc:"Rows read per query."`
//		Poll      time.Duration `env:"FEEDER_POLL" envDefault:"1s" doc:"Fallback poll interval."`
//		Subjects  []string      `env:"FEEDER_SUBJECTS" envSeparator:"," doc:"Subjects to serve."`
//		NATS      natsconn.Config
//	}
//
//	cfg, err := config.Load[Config](config.WithPrefixCheck("FEEDER_", "NATS_"))
//
// Load collects every problem instead of stopping at the first: values that
// do not parse, required variables that are missing, the problems reported by
// the Validate method of the struct and of every struct nested in it (see
// Validator), and — with WithPrefixCheck — variables that look like settings
// but that no field declares, which are usually typos. The result is an
// *Error that matches ErrInvalid with errors.Is.
package config

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
)

// Validator is implemented by configuration structs that check more than
// each value on its own: combinations of settings, ranges, files that must
// exist. Validate returns every problem it finds, each starting with the name
// of the variable it is about followed by ": ", and nil when there is none.
//
// Load calls Validate on the loaded struct and on every struct nested in it.
// When a nested struct is reached through an envPrefix, a problem that starts
// with one of its own variable names is reported under the prefixed name.
type Validator interface {
	Validate() []string
}

// Option changes how Load reads the environment.
type Option func(*options)

type options struct {
	environ  map[string]string
	prefixes []string
}

// WithEnvironment makes Load read variables from environ instead of the
// process environment. Tests use it to load a configuration without
// touching os.Environ.
func WithEnvironment(environ map[string]string) Option {
	return func(o *options) {
		o.environ = maps.Clone(environ)
		if o.environ == nil {
			o.environ = map[string]string{}
		}
	}
}

// WithPrefixCheck reports every variable in the environment whose name starts
// with one of prefixes but that no field declares, with the closest declared
// name as a suggestion. Choose prefixes that belong to this service only:
// a variable meant for another program that shares a prefix (the nats CLI
// reads NATS_CONTEXT, for instance) would be reported too.
func WithPrefixCheck(prefixes ...string) Option {
	return func(o *options) { o.prefixes = append(o.prefixes, prefixes...) }
}

// Load reads a T from the environment. T must be a struct type.
//
// On problems with the values it returns the zero T and an *Error listing
// all of them (errors.Is(err, ErrInvalid) holds). Any other error means the
// struct itself cannot be loaded: an unsupported field type or tag option.
func Load[T any](opts ...Option) (T, error) {
	var zero, t T
	if k := reflect.TypeFor[T]().Kind(); k != reflect.Struct {
		return zero, fmt.Errorf("config: Load needs a struct type, not %s", reflect.TypeFor[T]())
	}
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.environ == nil {
		o.environ = env.ToMap(os.Environ())
	}
	vars, err := Vars(&t)
	if err != nil {
		return zero, err
	}

	var problems []string
	if err := env.ParseWithOptions(&t, env.Options{Environment: o.environ}); err != nil {
		var agg env.AggregateError
		if !errors.As(err, &agg) {
			return zero, fmt.Errorf("config: %w", err)
		}
		used := map[string]bool{}
		for _, e := range agg.Errors {
			p, err := o.problem(e, vars, used)
			if err != nil {
				return zero, fmt.Errorf("config: %s: %w", reflect.TypeFor[T](), err)
			}
			problems = append(problems, p)
		}
	}
	// A variable that did not parse holds its zero value: what a Validate
	// method says about it adds nothing to the parse problem.
	bad := map[string]bool{}
	for _, p := range problems {
		if m := problemKey.FindStringSubmatch(p); m != nil {
			bad[m[1]] = true
		}
	}
	for _, p := range validate(reflect.ValueOf(&t).Elem(), "", vars) {
		if m := problemKey.FindStringSubmatch(p); m == nil || !bad[m[1]] {
			problems = append(problems, p)
		}
	}
	problems = append(problems, unknown(o.environ, o.prefixes, vars)...)
	if len(problems) > 0 {
		return zero, &Error{Problems: dedupe(problems)}
	}
	return t, nil
}

// problem turns one error of the env library into a problem line, or returns
// it as is when it is a programming error rather than a bad value.
func (o *options) problem(e error, vars []Var, used map[string]bool) (string, error) {
	var (
		notSet   env.VarIsNotSetError
		empty    env.EmptyVarError
		file     env.LoadFileContentError
		parse    env.ParseError
		noParser env.NoParserError
		noOpt    env.NoSupportedTagOptionError
		notPtr   env.NotStructPtrError
	)
	switch {
	case errors.As(e, &notSet):
		return notSet.Key + ": required but not set", nil
	case errors.As(e, &empty):
		return empty.Key + ": must not be empty", nil
	case errors.As(e, &file):
		return fmt.Sprintf("%s: cannot read file: %v", file.Key, unwrapPathErr(file.Err, file.Filename)), nil
	case errors.As(e, &parse):
		return o.parseProblem(parse, vars, used), nil
	case errors.As(e, &noParser), errors.As(e, &noOpt), errors.As(e, &notPtr):
		return "", e
	default:
		return e.Error(), nil
	}
}

func unwrapPathErr(err error, name string) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Sprintf("%q: %v", name, pe.Err)
	}
	return err.Error()
}

// parseProblem names the variable behind a ParseError, which only carries the
// Go field name and type. When several variables share both, the one whose
// value does not parse on its own is chosen.
func (o *options) parseProblem(pe env.ParseError, vars []Var, used map[string]bool) string {
	var candidates []Var
	for _, v := range vars {
		if v.Type == pe.Type && lastField(v.Field) == pe.Name && !used[v.Key] {
			candidates = append(candidates, v)
		}
	}
	var v Var
	switch {
	case len(candidates) == 0:
		v = Var{Key: pe.Name, Type: pe.Type}
	case len(candidates) == 1:
		v = candidates[0]
	default:
		v = candidates[0]
		for _, c := range candidates {
			if !o.parses(c) {
				v = c
				break
			}
		}
	}
	used[v.Key] = true

	raw := o.raw(v)
	inner := pe.Err
	var (
		num *strconv.NumError
		pve env.ParseValueError
		ue  *url.Error
	)
	if errors.As(inner, &num) {
		inner = num.Err
	} else if errors.As(inner, &pve) {
		inner = pve.Err
		if errors.As(inner, &ue) {
			inner = ue.Err
		}
	}
	msg := inner.Error()
	if v.File || looksSecret(v.Key, raw) {
		if raw != "" {
			msg = strings.ReplaceAll(msg, raw, "[REDACTED]")
			if q := strconv.Quote(raw); len(q) > 2 {
				msg = strings.ReplaceAll(msg, q[1:len(q)-1], "[REDACTED]")
			}
		}
		return fmt.Sprintf("%s: cannot parse value as %s: %s", v.Key, typeLabel(pe.Type), msg)
	}
	return fmt.Sprintf("%s: cannot parse %q as %s: %s", v.Key, raw, typeLabel(pe.Type), msg)
}

// raw is the text the env library parsed for v.
func (o *options) raw(v Var) string {
	if s := o.environ[v.Key]; s != "" || !v.HasDefault {
		return s
	}
	return v.Default
}

// parses reports whether v's value parses on its own.
func (o *options) parses(v Var) bool {
	if strings.Contains(v.Key, IndexPlaceholder) {
		return true
	}
	tag := `env:"V"`
	if v.Separator != "" {
		tag += ` envSeparator:` + strconv.Quote(v.Separator)
	}
	st := reflect.StructOf([]reflect.StructField{{Name: "V", Type: v.Type, Tag: reflect.StructTag(tag)}})
	ptr := reflect.New(st)
	return env.ParseWithOptions(ptr.Interface(), env.Options{Environment: map[string]string{"V": o.raw(v)}}) == nil
}

func lastField(path string) string {
	return path[strings.LastIndexByte(path, '.')+1:]
}

var secretWords = []string{"PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL", "PRIVATE", "SEED", "APIKEY", "API_KEY"}

// looksSecret reports whether a value must not be repeated in a problem.
func looksSecret(key, raw string) bool {
	if strings.Contains(raw, "@") { // URL user info
		return true
	}
	k := strings.ToUpper(key)
	return slices.ContainsFunc(secretWords, func(w string) bool { return strings.Contains(k, w) })
}

func typeLabel(t reflect.Type) string {
	t = deref(t)
	if t == reflect.TypeFor[time.Duration]() {
		return "a duration (e.g. 250ms, 5s, 1m30s)"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return fmt.Sprintf("an integer (%d bits)", t.Bits())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return fmt.Sprintf("a non-negative integer (%d bits)", t.Bits())
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice:
		return "a list of " + strings.TrimPrefix(strings.TrimPrefix(typeLabel(t.Elem()), "a "), "an ")
	default:
		return t.String()
	}
}

var problemKey = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*):`)

// validate calls Validate on v's nested structs, then on v itself. prefix is
// the envPrefix under which v was reached.
func validate(v reflect.Value, prefix string, vars []Var) []string {
	var problems []string
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() || f.Tag.Get("env") != "" {
			continue
		}
		fv := v.Field(i)
		for fv.Kind() == reflect.Pointer && !fv.IsNil() {
			fv = fv.Elem()
		}
		nested := prefix + f.Tag.Get("envPrefix")
		switch fv.Kind() {
		case reflect.Struct:
			problems = append(problems, validate(fv, nested, vars)...)
		case reflect.Slice:
			if nested != "" && !strings.HasSuffix(nested, "_") {
				nested += "_"
			}
			for j := range fv.Len() {
				ev := fv.Index(j)
				for ev.Kind() == reflect.Pointer && !ev.IsNil() {
					ev = ev.Elem()
				}
				if ev.Kind() == reflect.Struct {
					problems = append(problems, validate(ev, nested+strconv.Itoa(j)+"_", vars)...)
				}
			}
		}
	}
	if !v.CanAddr() {
		return problems
	}
	val, ok := v.Addr().Interface().(Validator)
	if !ok {
		return problems
	}
	for _, p := range val.Validate() {
		if prefix != "" {
			if m := problemKey.FindStringSubmatch(p); m != nil && declared(vars, prefix+m[1]) {
				p = prefix + p
			}
		}
		problems = append(problems, p)
	}
	return problems
}

func declared(vars []Var, key string) bool {
	return slices.ContainsFunc(vars, func(v Var) bool { return v.matches(key) })
}

// unknown reports the variables with one of prefixes that no field declares.
func unknown(environ map[string]string, prefixes []string, vars []Var) []string {
	if len(prefixes) == 0 {
		return nil
	}
	var problems []string
	for _, k := range slices.Sorted(maps.Keys(environ)) {
		if !slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(k, p) }) || declared(vars, k) {
			continue
		}
		p := k + ": unknown variable (no setting has this name)"
		if s := suggest(k, vars); s != "" {
			p = fmt.Sprintf("%s: unknown variable (did you mean %s?)", k, s)
		}
		problems = append(problems, p)
	}
	return problems
}

// suggest returns the declared name closest to key, if it is close enough to
// be a typo.
func suggest(key string, vars []Var) string {
	best, bestDist := "", max(2, len(key)/4)+1
	for _, v := range vars {
		if d := distance(key, v.Key); d < bestDist {
			best, bestDist = v.Key, d
		}
	}
	return best
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func dedupe(problems []string) []string {
	seen := make(map[string]bool, len(problems))
	out := problems[:0]
	for _, p := range problems {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}
