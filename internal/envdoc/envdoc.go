// Package envdoc documents configuration structs (see package config): it
// renders their environment variables as markdown tables and keeps the
// tables in a document up to date between markers
//
//	<!-- envdoc:nats -->
//	…generated, do not edit…
//	<!-- /envdoc:nats -->
//
// where "nats" names a section: a configuration struct registered by the
// caller (internal/cmd/envdoc).
package envdoc

import (
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/jetproj/jetproj/internal/config"
)

// Header is the first line of every table.
const Header = "| Variable | Default | Required | Description |"

// Markdown renders the variables of the configuration struct v (or the
// struct v points to) as a markdown table, one row per variable in field
// order, from the env, envDefault, envSeparator and doc tags and the
// required, notEmpty and file options. The result ends with a newline.
func Markdown(v any) (string, error) {
	vars, err := config.Vars(v)
	if err != nil {
		return "", err
	}
	if len(vars) == 0 {
		return "", fmt.Errorf("envdoc: %T declares no environment variables", v)
	}
	var b strings.Builder
	b.WriteString(Header + "\n|---|---|---|---|\n")
	for _, v := range vars {
		def := ""
		if v.HasDefault {
			def = code(v.Default)
		}
		req := ""
		if v.Required || v.NotEmpty {
			req = "yes"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", code(v.Key), def, req, cell(describe(v)))
	}
	return b.String(), nil
}

// describe is the doc tag plus what the tags imply about the value.
func describe(v config.Var) string {
	d := strings.TrimSpace(v.Doc)
	add := func(s string) {
		if d != "" && !strings.HasSuffix(d, ".") {
			d += "."
		}
		if d != "" {
			d += " "
		}
		d += s
	}
	switch t := deref(v.Type); {
	case t.Kind() == reflect.Map:
		add(fmt.Sprintf("Pairs `key:value` separated by %s.", code(v.Separator)))
	case t.Kind() == reflect.Slice:
		add(fmt.Sprintf("List separated by %s.", code(v.Separator)))
	}
	if v.File {
		add("The value is the path of a file that holds the setting.")
	}
	if v.NotEmpty {
		add("Must not be empty.")
	}
	if strings.Contains(v.Key, config.IndexPlaceholder) {
		add(fmt.Sprintf("%s is 0, 1, 2 … for each entry.", code(config.IndexPlaceholder)))
	}
	return d
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// code formats s as inline code, choosing a fence that s does not contain.
func code(s string) string {
	if s == "" {
		return "`\"\"`"
	}
	fence := "`"
	for strings.Contains(s, fence) {
		fence += "`"
	}
	if strings.HasPrefix(s, "`") || strings.HasSuffix(s, "`") {
		s = " " + s + " "
	}
	return fence + s + fence
}

// cell makes s safe inside a table cell.
func cell(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	return strings.ReplaceAll(s, "|", `\|`)
}

var marker = regexp.MustCompile(`<!--[ \t]*(/?)envdoc:([A-Za-z0-9_.-]+)[ \t]*-->`)

type region struct {
	name       string
	start, end int // of the text between the markers
}

// regions finds the marked regions of doc and checks that every marker pairs
// up and names a section.
func regions(doc string, sections map[string]any) ([]region, error) {
	var (
		out  []region
		open *region
		line = func(off int) int { return strings.Count(doc[:off], "\n") + 1 }
	)
	for _, m := range marker.FindAllStringSubmatchIndex(doc, -1) {
		closing, name := doc[m[2]:m[3]] == "/", doc[m[4]:m[5]]
		switch {
		case !closing && open != nil:
			return nil, fmt.Errorf("%w: line %d: envdoc:%s opens inside envdoc:%s", ErrMarkers, line(m[0]), name, open.name)
		case !closing:
			if _, ok := sections[name]; !ok {
				return nil, fmt.Errorf("%w: line %d: unknown section %q (known: %s)", ErrMarkers, line(m[0]), name,
					strings.Join(slices.Sorted(maps.Keys(sections)), ", "))
			}
			open = &region{name: name, start: m[1]}
		case open == nil || open.name != name:
			return nil, fmt.Errorf("%w: line %d: /envdoc:%s closes no open section", ErrMarkers, line(m[0]), name)
		default:
			open.end = m[0]
			out = append(out, *open)
			open = nil
		}
	}
	if open != nil {
		return nil, fmt.Errorf("%w: line %d: envdoc:%s is not closed by <!-- /envdoc:%s -->", ErrMarkers, line(open.start), open.name, open.name)
	}
	return out, nil
}

// body is what Rewrite puts between the markers of a section.
func body(v any) (string, error) {
	table, err := Markdown(v)
	if err != nil {
		return "", err
	}
	return "\n\n" + table + "\n", nil
}

// Rewrite returns doc with the text between the markers of every section
// replaced by the section's generated table. Sections without markers are
// left out (Check reports them); markers that do not pair up or that name a
// section not in sections are an error wrapping ErrMarkers.
func Rewrite(doc string, sections map[string]any) (string, error) {
	rs, err := regions(doc, sections)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	last := 0
	for _, r := range rs {
		text, err := body(sections[r.name])
		if err != nil {
			return "", fmt.Errorf("envdoc: section %s: %w", r.name, err)
		}
		b.WriteString(doc[last:r.start])
		b.WriteString(text)
		last = r.end
	}
	b.WriteString(doc[last:])
	return b.String(), nil
}

// Check compares doc with what Rewrite would make of it: stale lists the
// sections whose tables differ, missing the sections that have no markers in
// doc. Both are sorted; both empty means doc is up to date.
func Check(doc string, sections map[string]any) (stale, missing []string, err error) {
	rs, err := regions(doc, sections)
	if err != nil {
		return nil, nil, err
	}
	found := map[string]bool{}
	for _, r := range rs {
		text, err := body(sections[r.name])
		if err != nil {
			return nil, nil, fmt.Errorf("envdoc: section %s: %w", r.name, err)
		}
		if doc[r.start:r.end] != text && !slices.Contains(stale, r.name) {
			stale = append(stale, r.name)
		}
		found[r.name] = true
	}
	for name := range sections {
		if !found[name] {
			missing = append(missing, name)
		}
	}
	slices.Sort(stale)
	slices.Sort(missing)
	return stale, missing, nil
}
