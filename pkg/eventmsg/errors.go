package eventmsg

import "errors"

// ErrNotEvent reports a message that lacks the headers of an event message.
var ErrNotEvent = errors.New("eventmsg: not an event message")
