package opsserver

// PublicError is an error whose message the endpoint may show to whoever
// asks it: built by jetproj from its own state (a connection status, a
// JetStream operation waiting, a wedged loop), with no address, user name,
// password or driver text in it. Any other error of a check is shown as
// "failing" only, and logged in full.
type PublicError struct{ Err error }

func (e *PublicError) Error() string { return e.Err.Error() }

func (e *PublicError) Unwrap() error { return e.Err }
