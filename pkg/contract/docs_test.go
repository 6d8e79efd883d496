package contract_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jetproj/jetproj/pkg/contract"
)

// names evaluates the entries of the Go column of docs/contract.md's Names
// table, with placeholders for the arguments: a projection's <name>, a
// stream <S>, a bucket <B>.
var names = map[string]string{
	"EventsStream":              contract.EventsStream,
	"EventsPrefix":              contract.EventsPrefix,
	"AllEvents":                 contract.AllEvents,
	"EventMsgID(position)":      strings.TrimSuffix(contract.EventMsgID(0), "0") + "<position>",
	"EventMsgIDPrefix":          contract.EventMsgIDPrefix,
	"ProjectionStream(name)":    contract.ProjectionStream("<name>"),
	"ProjectionStreamPrefix":    contract.ProjectionStreamPrefix,
	"ProjectionSubjects(name)":  contract.ProjectionSubjects("<name>"),
	"ProjectionPrefix":          contract.ProjectionPrefix,
	"AllProjections":            contract.AllProjections,
	"LinkedSubjects(S)":         contract.LinkedSubjects("<S>"),
	"LinkedSubject(S, subject)": contract.LinkedSubject("<S>", contract.ProjectionPrefix+".<name>.<partition tokens>"),
	"LinkedStreamDescription":   contract.LinkedStreamDescription,
	"MetadataCorrelationID":     contract.MetadataCorrelationID,
	"BucketPrefix":              contract.BucketPrefix,
	"RegistryBucket":            contract.RegistryBucket,
	"LeaseBucket(name)":         contract.LeaseBucket("<name>"),
	"LeaseBucketPrefix":         contract.LeaseBucketPrefix,
	"StateBucket(name)":         contract.StateBucket("<name>"),
	"StateBucketPrefix":         contract.StateBucketPrefix,
	"ProgressBucket":            contract.ProgressBucket,
	"FeederLeaseBucket":         contract.FeederLeaseBucket,
	"FeederStateBucket":         contract.FeederStateBucket,
	"EmitterLeaseBucket":        contract.EmitterLeaseBucket,
	"StatusBucket":              contract.StatusBucket,
	"KVStream(B)":               contract.KVStream("<B>"),
	"KVSubjectPrefix(B)":        contract.KVSubjectPrefix("<B>"),
	"ControlSubject(name)":      contract.ControlSubject("<name>"),
	"ControlPrefix":             contract.ControlPrefix,
	"AllControl":                contract.AllControl,
	"ProgressSubject(name)":     contract.ProgressSubject("<name>"),
	"ProgressPrefix":            contract.ProgressPrefix,
	"AllProgress":               contract.AllProgress,
}

// headers are the header names; docs/contract.md lists them in its tables
// whose first column is "header" (a metadata entry as Meta-<key>).
var headers = map[string]string{
	"HeaderMsgID":                contract.HeaderMsgID,
	"HeaderExpectedLastSequence": contract.HeaderExpectedLastSequence,
	"HeaderEventType":            contract.HeaderEventType,
	"HeaderEventPosition":        contract.HeaderEventPosition,
	"HeaderEventTransaction":     contract.HeaderEventTransaction,
	"HeaderAggregateType":        contract.HeaderAggregateType,
	"HeaderAggregateID":          contract.HeaderAggregateID,
	"HeaderAggregateVersion":     contract.HeaderAggregateVersion,
	"HeaderRecordedAt":           contract.HeaderRecordedAt,
	"HeaderTraceParent":          contract.HeaderTraceParent,
	"HeaderTraceState":           contract.HeaderTraceState,
	"MetaPrefix":                 contract.MetaPrefix + "<key>",
	"HeaderProjection":           contract.HeaderProjection,
	"HeaderPartition":            contract.HeaderPartition,
	"HeaderGeneration":           contract.HeaderGeneration,
	"HeaderEmissionSeq":          contract.HeaderEmissionSeq,
	"HeaderSourceSequence":       contract.HeaderSourceSequence,
	"HeaderSourcePosition":       contract.HeaderSourcePosition,
	"HeaderCausationID":          contract.HeaderCausationID,
	"HeaderCorrelationID":        contract.HeaderCorrelationID,
}

var codeSpan = regexp.MustCompile("`([^`]+)`")

func spans(s string) []string {
	var out []string
	for _, m := range codeSpan.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

// tables returns the rows of the Markdown tables of doc, by table, each
// row split into its cells; the first row of a table is its header.
func tables(doc string) [][][]string {
	var out [][][]string
	var cur [][]string
	for line := range strings.Lines(doc) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			if cur != nil {
				out, cur = append(out, cur), nil
			}
			continue
		}
		if strings.HasPrefix(line, "|---") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		cur = append(cur, cells)
	}
	if cur != nil {
		out = append(out, cur)
	}
	return out
}

// exported lists the package's exported constants and functions.
func exported(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var out []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, e.Name(), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Recv == nil && d.Name.IsExported() {
					out = append(out, d.Name.Name)
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					switch s := s.(type) {
					case *ast.ValueSpec:
						for _, n := range s.Names {
							if n.IsExported() {
								out = append(out, n.Name)
							}
						}
					case *ast.TypeSpec:
						if s.Name.IsExported() {
							out = append(out, s.Name.Name)
						}
					}
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no exported names found")
	}
	return out
}

// TestDocsMatchContract checks docs/contract.md against the package: every
// row of its Names table names what the Go column evaluates to, every
// exported name of the package is in that column or is a header, and the
// header tables list exactly the package's headers.
func TestDocsMatchContract(t *testing.T) {
	b, err := os.ReadFile("../../docs/contract.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)

	var namesTable [][]string
	documentedHeaders := map[string]bool{}
	for _, tab := range tables(doc) {
		head := tab[0]
		switch {
		case len(head) == 3 && head[0] == "object" && head[1] == "name" && strings.HasPrefix(head[2], "Go"):
			if namesTable != nil {
				t.Fatal("two Names tables")
			}
			namesTable = tab[1:]
		case head[0] == "header":
			for _, row := range tab[1:] {
				for _, h := range spans(row[0]) {
					documentedHeaders[h] = true
				}
			}
		}
	}
	if namesTable == nil {
		t.Fatal("no Names table (| object | name | Go (`contract.`) |) in docs/contract.md")
	}

	inGoColumn := map[string]bool{}
	for _, row := range namesTable {
		if len(row) != 3 {
			t.Errorf("Names row %q: want 3 cells", row)
			continue
		}
		named := spans(row[1])
		for _, entry := range spans(row[2]) {
			ident, _, _ := strings.Cut(entry, "(")
			inGoColumn[ident] = true
			want, ok := names[entry]
			if !ok {
				t.Errorf("Names row %q: Go entry %q is not one this test knows (add it to names)", row[0], entry)
				continue
			}
			if !slices.ContainsFunc(named, func(n string) bool { return strings.HasPrefix(n, want) }) {
				t.Errorf("Names row %q: %s is %q, which the row does not name (it names %q)", row[0], entry, want, named)
			}
		}
	}

	for _, ident := range exported(t) {
		if _, ok := headers[ident]; ok {
			continue
		}
		if !inGoColumn[ident] {
			t.Errorf("contract.%s is not in the Go column of docs/contract.md's Names table", ident)
		}
	}
	for _, ident := range exported(t) {
		if strings.HasPrefix(ident, "Header") {
			if _, ok := headers[ident]; !ok {
				t.Errorf("contract.%s: add it to this test's headers and to a header table of docs/contract.md", ident)
			}
		}
	}

	want := map[string]bool{}
	for ident, h := range headers {
		want[h] = true
		if !documentedHeaders[h] {
			t.Errorf("contract.%s (%q) is in no header table of docs/contract.md", ident, h)
		}
	}
	for h := range documentedHeaders {
		if !want[h] {
			t.Errorf("docs/contract.md lists header %q, which package contract does not define", h)
		}
	}
}
