package envdoc

import "errors"

// ErrMarkers reports markers that do not pair up or name an unknown section.
var ErrMarkers = errors.New("envdoc: bad markers")
