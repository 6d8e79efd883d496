package natsconn

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
)

// redacted replaces secrets in Config.Redacted, String, LogValue and in the
// errors and logs of this package.
const redacted = "REDACTED"

// maxPayloadLimit is the largest max_payload a NATS server accepts (64 MiB).
const maxPayloadLimit = 64 << 20

// Config is the connection to NATS shared by every jetproj service. Load it
// with config.Load; its variables are documented by internal/cmd/envdoc.
//
// An empty URL starts an embedded server with JetStream in the process (the
// single-binary demo default). The zero Config, built in Go rather than read
// from the environment, gives an embedded server on a random port in a
// temporary directory that Close removes.
type Config struct {
	URL string `env:"NATS_URL" doc:"Server URL(s), comma-separated, e.g. nats://nats:4222. User info in the URL is accepted and never logged. Empty: start an embedded NATS server with JetStream in the process (development only)."`

	Creds    string `env:"NATS_CREDS" doc:"Path of a credentials file (JWT and NKey seed) for decentralized authentication."`
	NKeySeed string `env:"NATS_NKEY_SEED" doc:"Path of a file holding an NKey seed (SU…) to authenticate with."`
	User     string `env:"NATS_USER" doc:"User name; needs NATS_PASSWORD."`
	Password string `env:"NATS_PASSWORD" doc:"Password of NATS_USER. Never logged."`
	Token    string `env:"NATS_TOKEN" doc:"Authentication token. Never logged."`

	TLSCA   string `env:"NATS_TLS_CA" doc:"Path of a PEM file with the CA certificates that sign the server's certificate."`
	TLSCert string `env:"NATS_TLS_CERT" doc:"Path of a PEM client certificate for mutual TLS; needs NATS_TLS_KEY."`
	TLSKey  string `env:"NATS_TLS_KEY" doc:"Path of the PEM private key of NATS_TLS_CERT."`

	Name string `env:"NATS_NAME" doc:"Connection name shown by the server (nats server report connections). Empty: the program's name."`

	EmbeddedDir        string `env:"NATS_EMBEDDED_DIR" envDefault:".data/nats" doc:"JetStream store directory of the embedded server (NATS_URL empty). Data survives restarts."`
	EmbeddedPort       int    `env:"NATS_EMBEDDED_PORT" envDefault:"4222" doc:"Loopback port of the embedded server, so that the nats CLI reaches the demo with its defaults. 0: a random free port."`
	EmbeddedMaxPayload int32  `env:"NATS_EMBEDDED_MAX_PAYLOAD" envDefault:"0" doc:"Largest message the embedded server accepts, in bytes. 0: the server default (1 MiB)."`
}

// Embedded reports whether Connect starts an embedded server.
func (c Config) Embedded() bool { return c.URL == "" }

// Validate reports every problem of the configuration, each prefixed with the
// name of its variable. Connect calls it; config.Load calls it too.
func (c Config) Validate() []string {
	var p []string
	if c.URL != "" {
		for _, u := range strings.Split(c.URL, ",") {
			if err := checkURL(strings.TrimSpace(u)); err != "" {
				p = append(p, "NATS_URL: "+err)
			}
		}
	} else if set := c.remoteOnly(); len(set) > 0 {
		p = append(p, fmt.Sprintf("NATS_URL: is empty, so an embedded server without authentication or TLS would start, but %s %s set: set NATS_URL to the server meant",
			strings.Join(set, ", "), plural(len(set), "is", "are")))
	}

	var methods []string
	if c.Creds != "" {
		methods = append(methods, "NATS_CREDS")
	}
	if c.NKeySeed != "" {
		methods = append(methods, "NATS_NKEY_SEED")
	}
	if c.User != "" || c.Password != "" {
		methods = append(methods, "NATS_USER/NATS_PASSWORD")
	}
	if c.Token != "" {
		methods = append(methods, "NATS_TOKEN")
	}
	if c.urlHasUserInfo() {
		methods = append(methods, "user info in NATS_URL")
	}
	if len(methods) > 1 {
		first, _, _ := strings.Cut(methods[0], "/")
		p = append(p, fmt.Sprintf("%s: several authentication methods are set (%s): use one", first, strings.Join(methods, ", ")))
	}
	if c.User != "" && c.Password == "" {
		p = append(p, "NATS_PASSWORD: required when NATS_USER is set")
	}
	if c.Password != "" && c.User == "" {
		p = append(p, "NATS_USER: required when NATS_PASSWORD is set")
	}
	if c.TLSCert != "" && c.TLSKey == "" {
		p = append(p, "NATS_TLS_KEY: required when NATS_TLS_CERT is set")
	}
	if c.TLSKey != "" && c.TLSCert == "" {
		p = append(p, "NATS_TLS_CERT: required when NATS_TLS_KEY is set")
	}
	for _, f := range []struct{ name, path string }{
		{"NATS_CREDS", c.Creds}, {"NATS_NKEY_SEED", c.NKeySeed},
		{"NATS_TLS_CA", c.TLSCA}, {"NATS_TLS_CERT", c.TLSCert}, {"NATS_TLS_KEY", c.TLSKey},
	} {
		if f.path == "" {
			continue
		}
		switch fi, err := os.Stat(f.path); {
		case err != nil:
			p = append(p, fmt.Sprintf("%s: file %q: %v", f.name, f.path, pathErr(err)))
		case fi.IsDir():
			p = append(p, fmt.Sprintf("%s: %q is a directory, not a file", f.name, f.path))
		}
	}
	if c.EmbeddedPort < 0 || c.EmbeddedPort > 65535 {
		p = append(p, fmt.Sprintf("NATS_EMBEDDED_PORT: %d is not a port (0 to 65535)", c.EmbeddedPort))
	}
	if c.EmbeddedMaxPayload < 0 || c.EmbeddedMaxPayload > maxPayloadLimit {
		p = append(p, fmt.Sprintf("NATS_EMBEDDED_MAX_PAYLOAD: %d is out of range (0 to %d bytes)", c.EmbeddedMaxPayload, maxPayloadLimit))
	}
	return p
}

// remoteOnly lists the settings that only apply to a server given by URL.
func (c Config) remoteOnly() []string {
	var set []string
	for _, f := range []struct{ name, v string }{
		{"NATS_CREDS", c.Creds}, {"NATS_NKEY_SEED", c.NKeySeed}, {"NATS_USER", c.User},
		{"NATS_PASSWORD", c.Password}, {"NATS_TOKEN", c.Token},
		{"NATS_TLS_CA", c.TLSCA}, {"NATS_TLS_CERT", c.TLSCert}, {"NATS_TLS_KEY", c.TLSKey},
	} {
		if f.v != "" {
			set = append(set, f.name)
		}
	}
	return set
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func pathErr(err error) error {
	if pe := (*os.PathError)(nil); errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// checkURL returns what is wrong with one server URL, never repeating it:
// it may hold a password.
func checkURL(s string) string {
	if s == "" {
		return "empty server URL in the list"
	}
	if !strings.Contains(s, "://") {
		s = "nats://" + s // as nats.Connect does
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Sprintf("%s is not a valid URL", redactURL(s))
	}
	switch u.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		return fmt.Sprintf("%s: scheme %q is not one of nats, tls, ws, wss", redactURL(s), u.Scheme)
	}
	if u.Hostname() == "" {
		return fmt.Sprintf("%s has no host", redactURL(s))
	}
	return ""
}

func (c Config) urlHasUserInfo() bool {
	for _, u := range strings.Split(c.URL, ",") {
		if _, _, ok := splitUserInfo(strings.TrimSpace(u)); ok {
			return true
		}
	}
	return false
}

// splitUserInfo returns the user info of a server URL (with or without a
// scheme) and the URL without it.
func splitUserInfo(s string) (userinfo, rest string, ok bool) {
	start := 0
	if i := strings.Index(s, "://"); i >= 0 {
		start = i + 3
	}
	end := len(s)
	if i := strings.IndexAny(s[start:], "/?#"); i >= 0 {
		end = start + i
	}
	at := strings.LastIndexByte(s[start:end], '@')
	if at < 0 {
		return "", s, false
	}
	return s[start : start+at], s[:start] + s[start+at+1:], true
}

// redactURL replaces the user info of every URL in the comma-separated list
// s with "REDACTED": with token authentication the user name is the secret.
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		if _, rest, ok := splitUserInfo(p); ok {
			start := 0
			if j := strings.Index(rest, "://"); j >= 0 {
				start = j + 3
			}
			parts[i] = rest[:start] + redacted + "@" + rest[start:]
		}
	}
	return strings.Join(parts, ",")
}

// secrets are the values to scrub from text that leaves the package.
// Secrets shorter than four characters are not scrubbed: replacing them
// everywhere would garble messages more than it would hide.
func (c Config) secrets() []string {
	var s []string
	add := func(v string) {
		if len(v) >= 4 {
			s = append(s, v, url.QueryEscape(v), url.PathEscape(v))
		}
	}
	add(c.Password)
	add(c.Token)
	for _, u := range strings.Split(c.URL, ",") {
		if info, _, ok := splitUserInfo(strings.TrimSpace(u)); ok {
			user, pass, _ := strings.Cut(info, ":")
			add(pass)
			add(user)
			if dec, err := url.PathUnescape(pass); err == nil {
				add(dec)
			}
			if dec, err := url.PathUnescape(user); err == nil {
				add(dec)
			}
		}
	}
	return s
}

// scrub removes every secret of c from s.
func (c Config) scrub(s string) string {
	for _, v := range c.secrets() {
		s = strings.ReplaceAll(s, v, redacted)
	}
	return s
}

// Redacted returns a copy of c that is safe to print: the password, the token
// and the user info of URLs are replaced with "REDACTED". File paths are kept.
func (c Config) Redacted() Config {
	if c.Password != "" {
		c.Password = redacted
	}
	if c.Token != "" {
		c.Token = redacted
	}
	c.URL = redactURL(c.URL)
	return c
}

// String formats the redacted configuration, so that printing a Config with
// the fmt verbs %v, %+v and %s never reveals a secret.
func (c Config) String() string {
	type plain Config // no String method: no recursion
	return fmt.Sprintf("%+v", plain(c.Redacted()))
}

// LogValue logs the redacted configuration as a group (slog.LogValuer).
func (c Config) LogValue() slog.Value {
	r := c.Redacted()
	attrs := []slog.Attr{slog.String("url", r.URL)}
	if r.URL == "" {
		attrs = append(attrs, slog.String("embedded_dir", r.EmbeddedDir), slog.Int("embedded_port", r.EmbeddedPort))
	}
	for _, a := range []struct{ k, v string }{
		{"creds", r.Creds}, {"nkey_seed", r.NKeySeed}, {"user", r.User}, {"password", r.Password},
		{"token", r.Token}, {"tls_ca", r.TLSCA}, {"tls_cert", r.TLSCert}, {"tls_key", r.TLSKey}, {"name", r.Name},
	} {
		if a.v != "" {
			attrs = append(attrs, slog.String(a.k, a.v))
		}
	}
	return slog.GroupValue(attrs...)
}
