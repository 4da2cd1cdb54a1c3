package config

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzExpand: expanding a document never changes its structure (kinds,
// keys, lengths), expands each string value as Expand does, leaves $${
// as a literal ${, and a value of any bytes arrives in the decoded
// configuration byte for byte, changing no other field. Seeds are in
// testdata/fuzz/FuzzExpand.
func FuzzExpand(f *testing.F) {
	f.Fuzz(func(t *testing.T, doc, secret string) {
		getenv := func(string) string { return secret }

		var n yaml.Node
		if err := yaml.Unmarshal([]byte(doc), &n); err == nil {
			before, values := shape(&n), scalarValues(&n)
			expandNode(&n, getenv)
			if after := shape(&n); after != before {
				t.Fatalf("expansion changed the structure of %q:\n%s\nto\n%s", doc, before, after)
			}
			for i, v := range scalarValues(&n) {
				old := values[i]
				if want := Expand(old.Value, getenv); old.isStr && v.Value != want || !old.isStr && v.Value != old.Value {
					t.Fatalf("value %q became %q", old.Value, v.Value)
				}
			}
		}

		if secret == "" {
			return
		}
		for _, form := range []string{"${CRM_DSN}", `"${CRM_DSN}"`, `'${CRM_DSN}'`, "!!str ${CRM_DSN}"} {
			doc := strings.Replace(fuzzConfig, "@DSN@", form, 1)
			c, err := parse([]byte(doc), func(k string) string {
				if k == "CRM_DSN" {
					return secret
				}
				return "postgres://" + k
			})
			if err != nil {
				t.Fatalf("dsn %s = %q: %v", form, secret, err)
			}
			if c.Systems["crm"].DSN != secret {
				t.Fatalf("dsn %s = %q arrived as %q", form, secret, c.Systems["crm"].DSN)
			}
			want, err := parse([]byte(strings.Replace(fuzzConfig, "@DSN@", "x", 1)), func(string) string { return "" })
			if err != nil {
				t.Fatal(err)
			}
			want.Systems["crm"].DSN = secret
			if !reflect.DeepEqual(c, want) {
				t.Fatalf("dsn %q changed other fields: %+v", secret, c)
			}
		}
	})
}

const fuzzConfig = `mapping: m.yaml
nats:
  url: nats://n
  embedded: {host: h, port: 1}
systems:
  crm:
    dsn: @DSN@
    slot: $${S}
  erp:
    dsn: e
flows:
  - {name: to-erp, from: crm, to: erp, batch: 2}
`

// shape describes a node tree without its scalar values (keys included).
func shape(n *yaml.Node) string {
	var b strings.Builder
	var walk func(n *yaml.Node, depth int, key bool)
	walk = func(n *yaml.Node, depth int, key bool) {
		fmt.Fprintf(&b, "%*s%d %q %d", depth, "", n.Kind, n.Anchor, len(n.Content))
		if key {
			fmt.Fprintf(&b, " key %q %q", n.Tag, n.Value)
		}
		b.WriteByte('\n')
		for i, c := range n.Content {
			walk(c, depth+1, n.Kind == yaml.MappingNode && i%2 == 0)
		}
	}
	walk(n, 0, false)
	return b.String()
}

type scalarValue struct {
	Value string
	isStr bool
}

// scalarValues lists the values of the scalars that are not mapping keys.
func scalarValues(n *yaml.Node) []scalarValue {
	var out []scalarValue
	var walk func(n *yaml.Node, key bool)
	walk = func(n *yaml.Node, key bool) {
		if n.Kind == yaml.ScalarNode && !key {
			out = append(out, scalarValue{Value: n.Value, isStr: n.ShortTag() == "!!str"})
		}
		for i, c := range n.Content {
			walk(c, n.Kind == yaml.MappingNode && i%2 == 0)
		}
	}
	walk(n, false)
	return out
}
