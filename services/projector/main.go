// Command projector runs the example domain's projections (package
// examples) on JetStream; see package projectorsvc for its commands. A
// projector for your own projections is this file with your definitions.
package main

import (
	"context"
	"os"

	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projectorsvc"
)

func main() {
	os.Exit(projectorsvc.Main(context.Background(), os.Args[1:], nil, os.Stdout, os.Stderr, examples.All))
}
