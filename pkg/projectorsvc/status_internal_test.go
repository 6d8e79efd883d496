package projectorsvc

import (
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/jetproj/jetproj/pkg/projector"
)

// Partition keys, event types, replica names and errors come from events
// and configuration: status prints them so that no control sequence reaches
// the terminal and no key can be taken for a flag or for two columns.
func TestPrintStatusQuotesHostileText(t *testing.T) {
	parked := func(key, typ, msg string) projector.Record {
		return projector.Record{Key: key, Parked: &projector.Parked{Seq: 7, EventType: typ, Error: msg, Attempts: 5, Since: time.Unix(0, 0).UTC()}}
	}
	st := projector.Status{Name: "wallet_balance", Kind: "partitioned", State: "active", Store: "kv",
		Owners: map[string]int{"r\x1b[2J": 64},
		Parked: []projector.Record{
			parked("wallet/\x1b]0;pwned\x07\x1b[31mred", "Money\x1b[0m", "boom \x1b[1A\x00 \xff end\r\nnext"),
			parked("-rf", "WalletOpened", "no"),
			parked("wallet/a b", "WalletOpened", "no"),
			parked("wallet/\xfe", "WalletOpened", "no"),
			parked("wallet/plain-Ünïcode", "WalletOpened", "no"),
		}}
	var b strings.Builder
	if err := printStatus(&b, []projector.Status{st}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, r := range out {
		if !unicode.IsPrint(r) && r != '\n' && r != ' ' {
			t.Fatalf("status printed control character %U:\n%s", r, out)
		}
	}
	if strings.Contains(out, "\ufffd") {
		t.Errorf("status printed invalid UTF-8 as U+FFFD:\n%s", out)
	}
	for _, want := range []string{
		`"wallet/\x1b]0;pwned\a\x1b[31mred"`, // quoted with %q
		`"Money\x1b[0m"`,
		`boom \x1b[1A\x00 \xff end next`, // the error: one line, escaped
		` "-rf" `,                        // never taken for a flag
		`"wallet/a b"`,
		`"wallet/\xfe"`,
		` wallet/plain-Ünïcode `, // printable keys stay as they are
		`"r\x1b[2J":64`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %s:\n%s", want, out)
		}
	}
}

func TestDisplayKey(t *testing.T) {
	for in, want := range map[string]string{
		"wallet/w-1": "wallet/w-1",
		"global":     "global",
		"":           `""`,
		"-x":         `"-x"`,
		"a\tb":       `"a\tb"`,
		`a"b`:        `"a\"b"`,
		"a\u200bb":   `"a\u200bb"`, // zero-width space: invisible
		"😀/ok":       "😀/ok",
	} {
		if got := displayKey(in); got != want {
			t.Errorf("displayKey(%q) = %s, want %s", in, got, want)
		}
	}
}
