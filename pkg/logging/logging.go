// Package logging builds the services' slog loggers from LOG_FORMAT and
// LOG_LEVEL.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Config selects the log format and level.
type Config struct {
	Format string `env:"LOG_FORMAT" envDefault:"text" doc:"Log format: text or json."`
	Level  string `env:"LOG_LEVEL" envDefault:"info" doc:"Log level: debug, info, warn or error."`
}

// Validate lists the problems with the configuration.
func (c Config) Validate() []string {
	var p []string
	if f := strings.ToLower(c.Format); f != "text" && f != "json" {
		p = append(p, fmt.Sprintf("LOG_FORMAT: %q is not text or json", c.Format))
	}
	if _, err := level(c.Level); err != nil {
		p = append(p, "LOG_LEVEL: "+err.Error())
	}
	return p
}

func level(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	if err != nil {
		return l, fmt.Errorf("%q is not debug, info, warn or error", s)
	}
	return l, nil
}

// New returns a logger writing to w; an invalid level falls back to info.
func New(w io.Writer, c Config) *slog.Logger {
	l, _ := level(c.Level)
	opts := &slog.HandlerOptions{Level: l}
	if strings.EqualFold(c.Format, "json") {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
