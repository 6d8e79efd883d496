package config

import (
	"fmt"
	"reflect"
	"strings"
)

// IndexPlaceholder stands for the index in the names of variables that fill a
// slice of structs: a field `Servers []Server envPrefix:"SERVERS_"` whose
// element declares HOST is documented as SERVERS_{n}_HOST and read from
// SERVERS_0_HOST, SERVERS_1_HOST …
const IndexPlaceholder = "{n}"

// Var describes one environment variable declared by a configuration struct.
type Var struct {
	// Key is the variable's full name, with every envPrefix applied.
	Key string
	// Field is the dotted Go path of the field, e.g. "NATS.URL".
	Field string
	// Type is the field's type.
	Type reflect.Type
	// Default is the envDefault tag; HasDefault tells an empty default from none.
	Default    string
	HasDefault bool
	// Required is set by the "required" option: the variable must be set.
	Required bool
	// NotEmpty is set by the "notEmpty" option: the value must not be empty.
	NotEmpty bool
	// File is set by the "file" option: the value names a file whose content
	// is the setting.
	File bool
	// Separator splits list values (envSeparator, "," when unset); empty for
	// types that are not slices or maps.
	Separator string
	// Doc is the description from the doc tag.
	Doc string
}

// Vars lists the environment variables that the struct v (or the struct v
// points to) declares with env tags, in field order, descending into nested
// structs and applying their envPrefix tags the way Load does. It fails on
// tags that Load could not use.
func Vars(v any) ([]Var, error) {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil, fmt.Errorf("config: %T is not a struct or a pointer to one", v)
	}
	var vars []Var
	err := walkType(t, "", "", map[reflect.Type]bool{}, func(v Var) { vars = append(vars, v) })
	return vars, err
}

// envOptions are the options of an env tag that caarlos0/env supports.
var envOptions = map[string]func(*Var){
	"":         func(*Var) {},
	"required": func(v *Var) { v.Required = true },
	"notEmpty": func(v *Var) { v.NotEmpty = true },
	"file":     func(v *Var) { v.File = true },
	"unset":    func(*Var) {},
	"expand":   func(*Var) {},
	"init":     func(*Var) {},
}

func walkType(t reflect.Type, prefix, path string, seen map[reflect.Type]bool, emit func(Var)) error {
	if seen[t] {
		return nil // a recursive type: env only fills what is already allocated
	}
	seen[t] = true
	defer delete(seen, t)

	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		fpath := f.Name
		if path != "" {
			fpath = path + "." + f.Name
		}
		key, opts, _ := strings.Cut(f.Tag.Get("env"), ",")
		if key == "-" {
			continue
		}
		if key != "" {
			v := Var{
				Key:   prefix + key,
				Field: fpath,
				Type:  f.Type,
				Doc:   f.Tag.Get("doc"),
			}
			v.Default, v.HasDefault = f.Tag.Lookup("envDefault")
			if opts != "" {
				for o := range strings.SplitSeq(opts, ",") {
					set, ok := envOptions[o]
					if !ok {
						return fmt.Errorf("config: field %s: unsupported env tag option %q", fpath, o)
					}
					set(&v)
				}
			}
			if k := deref(f.Type).Kind(); k == reflect.Slice || k == reflect.Map {
				v.Separator = f.Tag.Get("envSeparator")
				if v.Separator == "" {
					v.Separator = ","
				}
			}
			emit(v)
			continue
		}
		nested := prefix + f.Tag.Get("envPrefix")
		switch ft := deref(f.Type); {
		case ft.Kind() == reflect.Struct:
			if err := walkType(ft, nested, fpath, seen, emit); err != nil {
				return err
			}
		case ft.Kind() == reflect.Slice && deref(ft.Elem()).Kind() == reflect.Struct:
			if nested != "" && !strings.HasSuffix(nested, "_") {
				nested += "_"
			}
			nested += IndexPlaceholder + "_"
			if err := walkType(deref(ft.Elem()), nested, fpath+"[]", seen, emit); err != nil {
				return err
			}
		}
	}
	return nil
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// matches reports whether the variable name declares key, where
// IndexPlaceholder in name stands for a decimal index.
func (v Var) matches(key string) bool {
	parts := strings.Split(v.Key, IndexPlaceholder)
	if len(parts) == 1 {
		return v.Key == key
	}
	rest, ok := strings.CutPrefix(key, parts[0])
	if !ok {
		return false
	}
	for _, p := range parts[1:] {
		n := 0
		for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
			n++
		}
		if n == 0 {
			return false
		}
		if rest, ok = strings.CutPrefix(rest[n:], p); !ok {
			return false
		}
	}
	return rest == ""
}
