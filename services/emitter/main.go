// Command emitter relays derived events from the projections' outbox to
// JetStream exactly once. See package emittersvc.
package main

import (
	"context"
	"os"

	"github.com/jetproj/jetproj/internal/emittersvc"
)

func main() {
	os.Exit(emittersvc.Main(context.Background(), os.Args[1:], nil, os.Stdout, os.Stderr))
}
