package statuspage

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"
)

// Config is the status page's part of the operations endpoint.
type Config struct {
	// Admin enables the page's actions (retry, skip, start, live).
	Admin string `env:"OPS_ADMIN" envDefault:"off" doc:"on: the status page (/) of a projector offers retry and skip of parked partitions, start and live on|off, to holders of a token from OPS_ADMIN_TOKEN_FILE, with a confirmation step; each action is logged with the token's name. off: the page is read-only and POST /actions answers 403."`
	// AdminTokenFile holds one "name:token" line per operator.
	AdminTokenFile string `env:"OPS_ADMIN_TOKEN_FILE" doc:"Path of a file (e.g. a mounted secret) of name:token lines, one per operator; needed with OPS_ADMIN=on. Names are [A-Za-z0-9_.@-]+, tokens at least 16 characters. Blank lines and lines starting with # are ignored."`
	// Interval is how often each service publishes its status and the page
	// samples the whole system.
	Interval time.Duration `env:"OPS_STATUS_INTERVAL" envDefault:"5s" doc:"How often every service publishes its status to the KV bucket jetproj_status (a projector replica reads the status of the projections whose slot 0 it owns, as projector status does) and the page samples it for its one-hour charts. At least 500ms."`
}

// AdminOn reports whether actions are enabled.
func (c Config) AdminOn() bool { return c.Admin == "on" }

// Validate reports every problem of c, including a token file that cannot
// be read or holds bad lines.
func (c Config) Validate() []string {
	var p []string
	switch c.Admin {
	case "on", "off":
	default:
		p = append(p, fmt.Sprintf("OPS_ADMIN: %q: want on or off", c.Admin))
	}
	if c.Interval < 500*time.Millisecond {
		p = append(p, fmt.Sprintf("OPS_STATUS_INTERVAL: %v: want at least 500ms", c.Interval))
	}
	if c.AdminOn() {
		if c.AdminTokenFile == "" {
			p = append(p, "OPS_ADMIN_TOKEN_FILE: needed with OPS_ADMIN=on")
		} else if _, err := ReadTokens(c.AdminTokenFile); err != nil {
			p = append(p, "OPS_ADMIN_TOKEN_FILE: "+err.Error())
		}
	}
	return p
}

// Tokens maps operator names to their tokens.
type Tokens map[string]string

var tokenName = regexp.MustCompile(`^[A-Za-z0-9_.@-]+$`)

// minTokenLen is the shortest token accepted.
const minTokenLen = 16

// ReadTokens reads a token file: lines "name:token", blank lines and
// #-comments ignored. Every bad line is reported.
func ReadTokens(path string) (Tokens, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseTokens(b)
}

// ParseTokens parses the content of a token file (see ReadTokens).
func ParseTokens(b []byte) (Tokens, error) {
	t := Tokens{}
	var problems []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, tok, ok := strings.Cut(line, ":")
		name, tok = strings.TrimSpace(name), strings.TrimSpace(tok)
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("line %d: want name:token", n))
		case !tokenName.MatchString(name):
			problems = append(problems, fmt.Sprintf("line %d: name %q: want [A-Za-z0-9_.@-]+", n, name))
		case len(tok) < minTokenLen:
			problems = append(problems, fmt.Sprintf("line %d (%s): token shorter than %d characters", n, name, minTokenLen))
		case t[name] != "":
			problems = append(problems, fmt.Sprintf("line %d: name %q given twice", n, name))
		default:
			t[name] = tok
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "; "))
	}
	if len(t) == 0 {
		return nil, errors.New("no name:token line")
	}
	return t, nil
}

// Who returns the name of the token's holder, comparing in constant time.
func (t Tokens) Who(token string) (string, bool) {
	found := ""
	for name, tok := range t {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(token)) == 1 {
			found = name
		}
	}
	return found, found != ""
}
