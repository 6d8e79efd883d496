package natsconn_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/natsconn"
)

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	got, err := config.Load[natsconn.Config](config.WithEnvironment(nil), config.WithPrefixCheck("NATS_"))
	if err != nil {
		t.Fatal(err)
	}
	want := natsconn.Config{EmbeddedDir: ".data/nats", EmbeddedPort: 4222}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if !got.Embedded() {
		t.Fatal("empty NATS_URL is not embedded")
	}
}

func TestLoadProblems(t *testing.T) {
	t.Parallel()
	_, err := config.Load[natsconn.Config](config.WithEnvironment(map[string]string{
		"NATS_USER":                 "u",
		"NATS_EMBEDDED_PORT":        "http",
		"NATS_EMBEDDED_MAX_PAYLOAD": "-5",
		"NATS_TLS_CERTS":            "/x",
	}), config.WithPrefixCheck("NATS_"))
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v", err)
	}
	want := []string{
		`NATS_EMBEDDED_PORT: cannot parse "http" as an integer (64 bits): invalid syntax`,
		"NATS_URL: is empty, so an embedded server without authentication or TLS would start, but NATS_USER is set: set NATS_URL to the server meant",
		"NATS_PASSWORD: required when NATS_USER is set",
		"NATS_EMBEDDED_MAX_PAYLOAD: -5 is out of range (0 to 67108864 bytes)",
		"NATS_TLS_CERTS: unknown variable (did you mean NATS_TLS_CERT?)",
	}
	if !slices.Equal(ce.Problems, want) {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(ce.Problems, "\n"), strings.Join(want, "\n"))
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	const url = "nats://nats:4222"
	for _, tc := range []struct {
		name string
		cfg  natsconn.Config
		want []string
	}{
		{"embedded", natsconn.Config{}, nil},
		{"plain", natsconn.Config{URL: url}, nil},
		{"server list", natsconn.Config{URL: "nats://a:4222, tls://b:4222,c:4222"}, nil},
		{"user", natsconn.Config{URL: url, User: "u", Password: "p"}, nil},
		{"creds and tls", natsconn.Config{URL: url, Creds: file, TLSCA: file, TLSCert: file, TLSKey: file}, nil},
		{"user info", natsconn.Config{URL: "nats://u:p@nats:4222"}, nil},
		{"bad scheme", natsconn.Config{URL: "http://u:secret@nats:4222"},
			[]string{`NATS_URL: http://REDACTED@nats:4222: scheme "http" is not one of nats, tls, ws, wss`}},
		{"bad URL", natsconn.Config{URL: "nats://u:secret@nats:x"},
			[]string{"NATS_URL: nats://REDACTED@nats:x is not a valid URL"}},
		{"empty in list", natsconn.Config{URL: "nats://a:4222,"}, []string{"NATS_URL: empty server URL in the list"}},
		{"user without password", natsconn.Config{URL: url, User: "u"}, []string{"NATS_PASSWORD: required when NATS_USER is set"}},
		{"password without user", natsconn.Config{URL: url, Password: "p"}, []string{"NATS_USER: required when NATS_PASSWORD is set"}},
		{"cert without key", natsconn.Config{URL: url, TLSCert: file}, []string{"NATS_TLS_KEY: required when NATS_TLS_CERT is set"}},
		{"key without cert", natsconn.Config{URL: url, TLSKey: file}, []string{"NATS_TLS_CERT: required when NATS_TLS_KEY is set"}},
		{"several auth methods", natsconn.Config{URL: "nats://t0ken@nats:4222", Token: "t", Creds: file, User: "u", Password: "p"},
			[]string{"NATS_CREDS: several authentication methods are set (NATS_CREDS, NATS_USER/NATS_PASSWORD, NATS_TOKEN, user info in NATS_URL): use one"}},
		{"missing files", natsconn.Config{URL: url, NKeySeed: missing, TLSCA: dir},
			[]string{
				fmt.Sprintf("NATS_NKEY_SEED: file %q: no such file or directory", missing),
				fmt.Sprintf("NATS_TLS_CA: %q is a directory, not a file", dir),
			}},
		{"credentials for the embedded server", natsconn.Config{Token: "t", TLSCA: file},
			[]string{"NATS_URL: is empty, so an embedded server without authentication or TLS would start, but NATS_TOKEN, NATS_TLS_CA are set: set NATS_URL to the server meant"}},
		{"embedded ranges", natsconn.Config{EmbeddedPort: 70000, EmbeddedMaxPayload: 128 << 20},
			[]string{
				"NATS_EMBEDDED_PORT: 70000 is not a port (0 to 65535)",
				"NATS_EMBEDDED_MAX_PAYLOAD: 134217728 is out of range (0 to 67108864 bytes)",
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.cfg.Validate(); !slices.Equal(got, tc.want) {
				t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestRedacted(t *testing.T) {
	t.Parallel()
	cfg := natsconn.Config{
		URL:      "nats://alice:pa55w0rd@a:4222,nats://t0ken-value@b:4222,c:4222",
		User:     "bob",
		Password: "hunter2-long",
		Token:    "tok-123456",
		Creds:    "/etc/nats/user.creds",
	}
	r := cfg.Redacted()
	want := natsconn.Config{
		URL:      "nats://REDACTED@a:4222,nats://REDACTED@b:4222,c:4222",
		User:     "bob",
		Password: "REDACTED",
		Token:    "REDACTED",
		Creds:    "/etc/nats/user.creds",
	}
	if r != want {
		t.Fatalf("Redacted() = %+v, want %+v", r, want)
	}
	if cfg.Password != "hunter2-long" {
		t.Fatal("Redacted changed the receiver")
	}

	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("config", "nats", cfg)
	type wrapper struct{ NATS natsconn.Config }
	for name, out := range map[string]string{
		"%v":         fmt.Sprintf("%v", cfg),
		"%+v":        fmt.Sprintf("%+v", cfg),
		"%s":         fmt.Sprintf("%s", cfg), //nolint:staticcheck // the %s verb is what is tested
		"%+v nested": fmt.Sprintf("%+v", wrapper{cfg}),
		"slog":       logs.String(),
	} {
		for _, secret := range []string{"pa55w0rd", "alice", "t0ken-value", "hunter2-long", "tok-123456"} {
			if strings.Contains(out, secret) {
				t.Errorf("%s reveals %q: %s", name, secret, out)
			}
		}
		if !strings.Contains(out, "/etc/nats/user.creds") || !strings.Contains(out, "REDACTED") {
			t.Errorf("%s = %s", name, out)
		}
	}
}
