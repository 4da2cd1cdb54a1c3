package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// TestGenerate_CommittedTableIsCurrent: transform/iso4217.go is what the
// pinned list and the amendments give; run `go generate ./transform`
// after changing either.
func TestGenerate_CommittedTableIsCurrent(t *testing.T) {
	got, err := generate("../../iso4217/list-one.xml", "../../iso4217/amendments.txt")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("../../iso4217.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("transform/iso4217.go is not what go generate writes from transform/iso4217/; run go generate ./transform")
	}
}

func TestParse_MinorUnits(t *testing.T) {
	f, err := os.Open("../../iso4217/list-one.xml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tb, err := parseList(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.amend(strings.NewReader("XCG 2 2025-03-31 \"Amendment 176\"\n")); err != nil {
		t.Fatal(err)
	}
	for code, want := range map[string]int{"XCG": 2, "JPY": 0, "BHD": 3, "KWD": 3, "CLF": 4, "UYW": 4, "EUR": 2, "ISK": 0, "ZWG": 2, "VES": 2} {
		if got, ok := tb.scale[code]; !ok || got != want {
			t.Errorf("%s: minor units %d (listed %v), want %d", code, got, ok, want)
		}
	}
	for _, code := range []string{"XAU", "XXX", "XDR", "DEM"} {
		if _, ok := tb.scale[code]; ok {
			t.Errorf("%s is in the table; it has no minor unit (or is withdrawn)", code)
		}
	}
}

func TestParse_Refusals(t *testing.T) {
	list := `<ISO_4217 Pblshd="2024-06-25"><CcyTbl>
<CcyNtry><CtryNm>A</CtryNm><Ccy>AAA</Ccy><CcyMnrUnts>2</CcyMnrUnts></CcyNtry>
<CcyNtry><CtryNm>B</CtryNm><Ccy>AAA</Ccy><CcyMnrUnts>3</CcyMnrUnts></CcyNtry>
</CcyTbl></ISO_4217>`
	if _, err := parseList(strings.NewReader(list)); err == nil || !strings.Contains(err.Error(), "AAA") {
		t.Errorf("a code with two minor units: err = %v", err)
	}
	if _, err := parseList(strings.NewReader(`<x/>`)); err == nil {
		t.Error("a document that is no list one was accepted")
	}
	one := `<ISO_4217 Pblshd="2024-06-25"><CcyTbl><CcyNtry><CtryNm>J</CtryNm><Ccy>JPY</Ccy><CcyMnrUnts>0</CcyMnrUnts></CcyNtry></CcyTbl></ISO_4217>`
	tb, err := parseList(strings.NewReader(one))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{`JPY 2 2025-01-01 "contradicts the list"`, `JPY two 2025-01-01 "x"`, `XCG 2 2025-03-31`} {
		if err := tb.amend(strings.NewReader(a)); err == nil {
			t.Errorf("amendment %q accepted", a)
		}
	}
}
