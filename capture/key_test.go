package capture

import (
	"slices"
	"testing"
)

func TestJoinKey_SplitKey(t *testing.T) {
	tests := []struct {
		name  string
		parts []string
		want  string
	}{
		{name: "one part as it is", parts: []string{"(a,b)"}, want: "(a,b)"},
		{name: "plain parts", parts: []string{"ACME", "1001"}, want: "(ACME,1001)"},
		{name: "comma and space quoted", parts: []string{"ACME, Inc", "7"}, want: `("ACME, Inc",7)`},
		{name: "quote and backslash doubled", parts: []string{`a"b`, `c\d`}, want: `("a""b","c\\d")`},
		{name: "empty part quoted", parts: []string{"", "x", "()"}, want: `("",x,"()")`},
		{name: "unicode kept", parts: []string{"Zürich", "東京"}, want: "(Zürich,東京)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := JoinKey(tt.parts)
			if got != tt.want {
				t.Fatalf("JoinKey(%q) = %s, want %s", tt.parts, got, tt.want)
			}
			back, err := SplitKey(got, len(tt.parts))
			if err != nil || !slices.Equal(back, tt.parts) {
				t.Fatalf("SplitKey(%s) = %q, %v; want %q", got, back, err, tt.parts)
			}
		})
	}
}

func TestSplitKey_Refuses(t *testing.T) {
	tests := []struct {
		name string
		key  string
		n    int
	}{
		{name: "no parentheses", key: "ACME,1", n: 2},
		{name: "too few parts", key: "(ACME)", n: 2},
		{name: "too many parts", key: "(a,b,c)", n: 2},
		{name: "NULL part", key: "(a,)", n: 2},
		{name: "open quote", key: `("a,b)`, n: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if parts, err := SplitKey(tt.key, tt.n); err == nil {
				t.Fatalf("SplitKey(%s, %d) = %q, want an error", tt.key, tt.n, parts)
			}
		})
	}
}

func TestSplitKey_AcceptsBackslashEscapes(t *testing.T) {
	// record_in accepts a backslash before any character.
	parts, err := SplitKey(`(a\,b,"c\"d")`, 2)
	if err != nil || !slices.Equal(parts, []string{"a,b", `c"d`}) {
		t.Fatalf("got %q, %v", parts, err)
	}
}

func TestComparePartsC(t *testing.T) {
	if ComparePartsC([]string{"A", "10"}, []string{"A", "9"}) >= 0 {
		t.Error(`("A","10") should sort before ("A","9") by bytes`)
	}
	if ComparePartsC([]string{"B", "1"}, []string{"A", "9"}) <= 0 {
		t.Error("the first part decides")
	}
	if ComparePartsC([]string{"a", "b"}, []string{"a", "b"}) != 0 {
		t.Error("equal keys")
	}
}
