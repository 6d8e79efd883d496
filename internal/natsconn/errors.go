package natsconn

import "errors"

// ErrEmbeddedPortInUse reports that the embedded server cannot listen on
// NATS_EMBEDDED_PORT because something else does, often a NATS server that
// NATS_URL should point to.
var ErrEmbeddedPortInUse = errors.New("natsconn: embedded server port in use")

// ErrClosed reports that the connection was closed without Close being
// called: the server ended it with an error after which nats.go does not
// reconnect (such as "maximum control line exceeded"), or reconnecting gave
// up. Nothing sent through the connection will ever arrive; the service has
// to end (or be restarted) to connect again.
var ErrClosed = errors.New("natsconn: connection closed by the server; not reconnecting")
