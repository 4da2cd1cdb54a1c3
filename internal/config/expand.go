package config

import (
	"bytes"
	"fmt"
	"maps"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Expand replaces ${VAR} and ${VAR:-default} with the environment's values
// (an unset or empty variable gives the default, or nothing) and $${ with a
// literal ${. The values are not expanded again.
func Expand(s string, getenv func(string) string) string {
	if !strings.Contains(s, "${") {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		if i > 0 && s[i-1] == '$' {
			// $${ is an escaped ${.
			b.WriteString(s[:i-1])
			b.WriteString("${")
			s = s[i+2:]
			continue
		}
		b.WriteString(s[:i])
		name, def, n := envRef(s[i+2:])
		if n == 0 {
			b.WriteString("${")
			s = s[i+2:]
			continue
		}
		if v := getenv(name); v != "" {
			b.WriteString(v)
		} else {
			b.WriteString(def)
		}
		s = s[i+2+n:]
	}
}

// envRef reads "NAME}" or "NAME:-default}" at the start of s, returning
// the name, the default and the length read (0 if s does not start with
// a reference).
func envRef(s string) (name, def string, n int) {
	i := 0
	for i < len(s) && (s[i] == '_' || 'A' <= s[i] && s[i] <= 'Z' || 'a' <= s[i] && s[i] <= 'z' || i > 0 && '0' <= s[i] && s[i] <= '9') {
		i++
	}
	if i == 0 || i == len(s) {
		return "", "", 0
	}
	name = s[:i]
	switch {
	case s[i] == '}':
		return name, "", i + 1
	case strings.HasPrefix(s[i:], ":-"):
		end := strings.IndexByte(s[i+2:], '}')
		if end < 0 {
			return "", "", 0
		}
		return name, s[i+2 : i+2+end], i + 2 + end + 1
	}
	return "", "", 0
}

// parse reads the YAML document, expands environment references in its
// string values (never in keys, so that no value can change the document's
// structure), and decodes it, refusing unknown keys.
func parse(b []byte, getenv func(string) string) (*Config, error) {
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(b)).Decode(&doc); err != nil {
		return nil, err
	}
	section, urlKey, urlRaw := natsKeys(&doc)
	expandNode(&doc, getenv)
	if err := knownFields(&doc, reflect.TypeFor[Config]()); err != nil {
		return nil, err
	}
	var c Config
	if err := doc.Decode(&c); err != nil {
		return nil, err
	}
	c.NATS.section, c.NATS.urlKey, c.NATS.urlRaw = section, urlKey, urlRaw
	if c.PII.KeyEnv != "" {
		c.PII.envKeys = getenv(c.PII.KeyEnv)
	}
	return &c, nil
}

// expandNode expands environment references in the string scalars of a
// node tree that are not mapping keys. The expanded text is the value as
// it is: a # or a quote in it is not YAML syntax. A plain (unquoted)
// scalar takes the type its new text reads as, so that a number field may
// still come from the environment, and an empty one is null as an empty
// plain value is; but text that reads as null (~, null) stays a string.
func expandNode(n *yaml.Node, getenv func(string) string) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			expandNode(c, getenv)
		}
	case yaml.MappingNode:
		for i := 1; i < len(n.Content); i += 2 {
			expandNode(n.Content[i], getenv)
		}
	case yaml.ScalarNode:
		if n.ShortTag() != "!!str" || !strings.Contains(n.Value, "${") {
			return
		}
		v := Expand(n.Value, getenv)
		if v == n.Value {
			return
		}
		n.Value = v
		if n.Style == 0 && n.Tag == "!!str" {
			switch v {
			case "~", "null", "Null", "NULL":
			default:
				n.Tag = "" // resolved from the new text when decoded
			}
		}
	}
}

// knownFields refuses mapping keys that no field of the struct they
// decode into takes, as yaml's Decoder.KnownFields does (a node tree is
// decoded without that check).
func knownFields(n *yaml.Node, t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if err := knownFields(c, t); err != nil {
				return err
			}
		}
	case yaml.AliasNode:
		if n.Alias != nil {
			return knownFields(n.Alias, t)
		}
	case yaml.SequenceNode:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			for _, c := range n.Content {
				if err := knownFields(c, t.Elem()); err != nil {
					return err
				}
			}
		}
	case yaml.MappingNode:
		switch t.Kind() {
		case reflect.Map:
			for i := 1; i < len(n.Content); i += 2 {
				if err := knownFields(n.Content[i], t.Elem()); err != nil {
					return err
				}
			}
		case reflect.Struct:
			fields := yamlFields(t)
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i]
				ft, ok := fields[k.Value]
				if !ok {
					return fmt.Errorf("line %d: field %s not found in type %s", k.Line, k.Value, t)
				}
				if err := knownFields(n.Content[i+1], ft); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// yamlFields maps the keys a struct takes to their field types.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, flags, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch {
		case name == "-":
			continue
		case flags == "inline" && f.Type.Kind() == reflect.Struct:
			maps.Copy(out, yamlFields(f.Type))
			continue
		case name == "":
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}
