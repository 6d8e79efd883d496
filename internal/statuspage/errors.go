package statuspage

import "errors"

// ErrBadAction wraps an action that cannot be done as asked (unknown
// projection, missing partition): the page answers 400.
var ErrBadAction = errors.New("statuspage: bad action")
