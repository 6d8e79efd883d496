package projector

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
	"unsafe"
)

func TestPartIsSmall(t *testing.T) {
	if n := unsafe.Sizeof(part{}); n > 64 {
		t.Fatalf("part is %d bytes, want ≤ 64 (a replica may hold millions)", n)
	}
}

func TestSlotOfIsFNV1a(t *testing.T) {
	for _, key := range []string{"", "wallet/w1", "order/ä", "x"} {
		h := fnv.New32a()
		h.Write([]byte(key))
		if got, want := SlotOf(key, 64), int(h.Sum32()%64); got != want {
			t.Fatalf("SlotOf(%q) = %d, want %d: slots would move", key, got, want)
		}
	}
}

func TestPartTable(t *testing.T) {
	tab := newPartTable(0)
	parts := map[string]*part{}
	for i := range 5000 {
		key := fmt.Sprintf("wallet/%d", i)
		p := newPart(3, key)
		p.setRecord(Record{Key: key, Seq: uint64(i), State: []byte(fmt.Sprintf(`{"n":%d}`, i))})
		tab.put(p)
		parts[key] = p
	}
	if tab.len() != 5000 {
		t.Fatalf("len %d", tab.len())
	}
	// Replacing keeps the count.
	q := newPart(3, "wallet/7")
	tab.put(q)
	parts["wallet/7"] = q
	if tab.len() != 5000 || tab.get("wallet/7") != q {
		t.Fatal("replace failed")
	}
	for k, p := range parts {
		if tab.get(k) != p {
			t.Fatalf("get %s", k)
		}
	}
	if tab.get("wallet/5000") != nil || tab.get("") != nil {
		t.Fatal("found a key never put")
	}
	n := 0
	tab.all(func(*part) { n++ })
	if n != 5000 {
		t.Fatalf("all visited %d", n)
	}
	if len(tab.buckets)*3 < tab.len()*4 {
		t.Fatalf("table over 3/4 full: %d of %d", tab.len(), len(tab.buckets))
	}
}

func TestPartRecordRoundTrip(t *testing.T) {
	rec := Record{Key: "wallet/w1", Seq: 9, Position: 4, State: []byte(`{"cents":5}`), Revision: 77, Emitted: 2}
	p := newPart(1, rec.Key)
	p.setRecord(rec)
	if p.x != nil {
		t.Fatal("a partition without failures needs no extra")
	}
	got := p.record()
	if fmt.Sprint(got) != fmt.Sprint(rec) {
		t.Fatalf("got %+v\nwant %+v", got, rec)
	}
	f := &failure{attempts: 2}
	p.setFailure(f)
	rec.Parked = &Parked{Seq: 10}
	p.setRecord(rec)
	if p.failure() != f || p.parked() == nil {
		t.Fatal("setRecord lost the failure or the parked info")
	}
	rec.Parked = nil
	p.setRecord(rec)
	p.setFailure(nil)
	if p.x != nil {
		t.Fatal("extra kept with nothing in it")
	}
	if string(p.state()) != `{"cents":5}` || p.key() != "wallet/w1" {
		t.Fatalf("key %q state %q", p.key(), p.state())
	}
}

func TestEncodeRecordMatchesJSON(t *testing.T) {
	now := time.Date(2026, 11, 22, 10, 0, 0, 123456789, time.UTC)
	for _, r := range []Record{
		{Key: "wallet/w1", Seq: 3, Updated: now},
		{Key: "wallet/w1", Subject: "events.wallet.w1", Seq: 3, Position: 9, State: []byte(`{"cents":5,"owner":"a"}`), Behind: true, Tenant: "t1", Skip: 4, Emitted: 2, Updated: now},
		{Key: `odd/"q"<&>`, Seq: 1, Updated: now},
		{Key: "ü/x", Seq: 1, Tenant: "tab\t", Updated: now},
		{Key: "k", Seq: 1, Parked: &Parked{Seq: 1, Error: "boom"}, Updated: now},
	} {
		got, err := encodeRecord(r)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(r)
		var g, w map[string]any
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatalf("%s: %v", got, err)
		}
		_ = json.Unmarshal(want, &w)
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("encodeRecord\n got %s\nwant %s", got, want)
		}
	}
}

func TestIsDerived(t *testing.T) {
	r := &runner{eventPrefix: "events"}
	for _, c := range []struct {
		key, subj string
		want      bool
	}{
		{"wallet/w1", "events.wallet.w1", true},
		{"wallet/w1", r.derivedSubject("wallet/w1"), true},
		{"wallet/a.b", r.derivedSubject("wallet/a.b"), true},
		{"wallet/w1", "events.wallet.w2", false},
		{"wallet/w1", "events.walle.w1", false},
		{"wallet/w1", "other.wallet.w1", false},
		{"wallet/w1", "events", false},
		{"w1", "events.w1", false},
	} {
		if got := r.isDerived(c.key, c.subj); got != c.want {
			t.Errorf("isDerived(%q, %q) = %v", c.key, c.subj, got)
		}
	}
}

func TestKVKeyTokenIsBoundedAndDistinct(t *testing.T) {
	long := strings.Repeat(".", 1500)
	for _, key := range []string{long, long + "x", strings.Repeat("é", 900), "wallet/" + strings.Repeat("a", 300)} {
		tok := kvKeyToken(key)
		if len(tok) > maxKVKeyToken {
			t.Errorf("token of a %d-byte key is %d bytes, want at most %d", len(key), len(tok), maxKVKeyToken)
		}
		if !strings.Contains(tok, "=H") {
			t.Errorf("long key not hashed: %s", tok)
		}
	}
	if kvKeyToken(long) == kvKeyToken(long+"x") {
		t.Error("two long keys share a token")
	}
	if got := kvKeyToken("wallet/w-1"); got != "wallet/w-1" {
		t.Errorf("short key changed: %s", got)
	}
}

func TestStoredStringRoundTrip(t *testing.T) {
	for _, s := range []string{"", "wallet/w-1", "wallet/bad\xffid", "nul\x00", "\x7fb64:x", "é✓"} {
		stored := storedString(s)
		if !utf8.ValidString(stored) || strings.IndexByte(stored, 0) >= 0 {
			t.Errorf("%q stored as %q: not valid UTF-8 without NUL", s, stored)
		}
		if got := loadedString(stored); got != s {
			t.Errorf("%q came back as %q", s, got)
		}
	}
	if storedString("wallet/w-1") != "wallet/w-1" {
		t.Error("an ordinary key is not stored as it is")
	}
}

// FuzzStoredKeys: any partition key survives the stores' encoding
// (storedString: valid UTF-8 without NUL, read back exactly) and gives a
// bounded KV key token of KV-key characters only.
func FuzzStoredKeys(f *testing.F) {
	for _, s := range []string{"", "wallet/w-1", "a\r\nb", "bad\xffid", "nul\x00", "\x7fb64:x", strings.Repeat(".", 1500), "é✓🚀"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		stored := storedString(key)
		if !utf8.ValidString(stored) || strings.IndexByte(stored, 0) >= 0 {
			t.Fatalf("%q stored as %q", key, stored)
		}
		if got := loadedString(stored); got != key {
			t.Fatalf("%q came back as %q", key, got)
		}
		tok := kvKeyToken(key)
		if len(tok) == 0 || len(tok) > maxKVKeyToken {
			t.Fatalf("token of %q is %d bytes", key, len(tok))
		}
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '/' || c == '=') {
				t.Fatalf("token of %q holds %q", key, c)
			}
		}
	})
}
