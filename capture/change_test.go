package capture

import "testing"

// TestParseLSN: PostgreSQL's text form of an LSN ("16/B374D848", upper or
// lower case) round-trips; anything else is refused, trailing text
// included (fmt.Sscanf, used before, ignored it).
func TestParseLSN(t *testing.T) {
	for _, s := range []string{"0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1"} {
		l, err := ParseLSN(s)
		if err != nil || l.String() != s {
			t.Errorf("ParseLSN(%q) = %v, %v; want it back", s, l, err)
		}
	}
	if l, err := ParseLSN("16/b374d848"); err != nil || l.String() != "16/B374D848" {
		t.Errorf("lower case: %v, %v", l, err)
	}
	for _, s := range []string{"", "/", "1/", "/1", "1", "1/2/3", "1/2x", "x/1", "+1/2", "1/-2", "100000000/0", " 1/2", "1/2 "} {
		if l, err := ParseLSN(s); err == nil {
			t.Errorf("ParseLSN(%q) = %v; want an error", s, l)
		}
	}
}
