package process

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// LogConfig selects the log format and level.
type LogConfig struct {
	Format string `env:"LOG_FORMAT" envDefault:"text" doc:"Log format: text or json."`
	Level  string `env:"LOG_LEVEL" envDefault:"info" doc:"Log level: debug, info, warn or error."`
}

// Validate lists the problems with the configuration.
func (c LogConfig) Validate() []string {
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

// NewLogger returns a logger writing to w; an invalid level falls back to info.
func NewLogger(w io.Writer, c LogConfig) *slog.Logger {
	l, _ := level(c.Level)
	opts := &slog.HandlerOptions{Level: l}
	if strings.EqualFold(c.Format, "json") {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
