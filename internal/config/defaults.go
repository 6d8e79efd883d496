package config

import (
	"errors"
	"fmt"
	"reflect"

	"github.com/caarlos0/env/v11"
)

// A setting's default is written once, in its envDefault tag. Load applies
// it to a variable that is not set; FillDefaults applies it to a zero field
// of a configuration built in Go, so that a service reading its
// environment and a program filling the struct itself get the same
// defaults, and the generated documentation shows them.

// Defaults returns the T that Load reads from an environment that sets
// nothing: each field with an envDefault tag holds its default, every
// other field its zero value. Required variables are not an error here.
//
// It panics on a tag that Load would reject too (a default that does not
// parse, an option the env library does not know): a programming error,
// which the struct's tests catch.
func Defaults[T any]() T {
	var zero T
	return FillDefaults(zero)
}

// FillDefaults returns c with each zero field that has an envDefault tag
// set to its default, as Load sets a variable that is not set; fields that
// hold a value keep it. It panics like Defaults.
func FillDefaults[T any](c T) T {
	if err := fillDefaults(&c); err != nil {
		panic(fmt.Sprintf("config: defaults of %s: %v", reflect.TypeFor[T](), err))
	}
	return c
}

// fillDefaults sets the zero fields of the struct ptr points to from their
// envDefault tags, reading no variable.
func fillDefaults(ptr any) error {
	err := env.ParseWithOptions(ptr, env.Options{
		Environment:                  map[string]string{},
		SetDefaultsForZeroValuesOnly: true,
	})
	var agg env.AggregateError
	if err == nil || !errors.As(err, &agg) {
		return err
	}
	var errs []error
	for _, e := range agg.Errors {
		var (
			notSet env.VarIsNotSetError
			empty  env.EmptyVarError
		)
		if !errors.As(e, &notSet) && !errors.As(e, &empty) {
			errs = append(errs, e)
		}
	}
	return errors.Join(errs...)
}
