// Package natstest gives package tests the NATS situations a single
// embedded server cannot: a JetStream cluster of three embedded servers
// whose nodes a test stops, restarts and whose leaders it moves (Cluster),
// and a TCP proxy in front of a server through which a test makes the
// server close a client's connection for good (Proxy).
package natstest

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// Proxy forwards TCP connections from its own loopback address to a NATS
// server. Clients connect to Proxy.URL.
type Proxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu    sync.Mutex
	conns []net.Conn // server sides, to write to and close
	wg    sync.WaitGroup
}

// NewProxy listens on a free loopback port and forwards every connection to
// target (host:port). It is closed when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{t: t, ln: ln, target: strings.TrimPrefix(target, "nats://")}
	p.wg.Go(p.accept)
	t.Cleanup(p.Close)
	return p
}

// URL is the proxy's client URL.
func (p *Proxy) URL() string { return "nats://" + p.ln.Addr().String() }

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, s, c)
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		p.wg.Go(func() { pipe(s, c) })
		p.wg.Go(func() { pipe(c, s) })
	}
}

// SendToServer writes raw protocol bytes to the server on every proxied
// connection, as if the clients had sent them. A PUB whose subject is
// longer than the server's max_control_line (4 KiB) makes the server answer
// "-ERR 'Maximum Control Line Exceeded'" and close the connection, after
// which nats.go does not reconnect.
func (p *Proxy) SendToServer(b []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.conns) == 0 {
		return errors.New("natstest: no connection through the proxy")
	}
	var errs []error
	for i := 0; i < len(p.conns); i += 2 {
		if _, err := p.conns[i].Write(b); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// OverlongPub is a PUB whose subject exceeds the server's default
// max_control_line.
func OverlongPub() []byte {
	return []byte("PUB " + strings.Repeat("x", 5000) + " 0\r\n\r\n")
}

// Close stops accepting, closes every proxied connection and waits for the
// forwarding goroutines.
func (p *Proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
