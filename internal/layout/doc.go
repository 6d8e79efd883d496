// Package layout checks that README.md's Layout tables name every Go
// package of the module and nothing that is not there (go test only).
package layout
