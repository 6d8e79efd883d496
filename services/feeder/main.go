// Command feeder publishes every committed event of the PostgreSQL event
// store exactly once to JetStream. See package feedersvc.
package main

import (
	"context"
	"os"

	"github.com/jetproj/jetproj/internal/feedersvc"
)

func main() {
	os.Exit(feedersvc.Main(context.Background(), os.Args[1:], nil, os.Stdout, os.Stderr))
}
