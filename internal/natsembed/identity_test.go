package natsembed

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestLoadIdentities: identities are generated once, atomically (starts
// at the same time agree on one seed), kept 0600, and read back; a
// missing one is reported when not to be created, and a file that holds
// no seed is refused naming it.
func TestLoadIdentities(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nkeys")
	names := []string{"operator", "capture-crm", "flow-to-erp"}
	if _, err := LoadIdentities(dir, names, false); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing identities without create: %v", err)
	}
	var wg sync.WaitGroup
	got := make([]map[string]*Identity, 8)
	errs := make([]error, 8)
	for i := range got {
		wg.Go(func() { got[i], errs[i] = LoadIdentities(dir, names, true) })
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		for _, n := range names {
			if got[i][n].PublicKey != got[0][n].PublicKey || !strings.HasPrefix(got[i][n].PublicKey, "U") {
				t.Errorf("start %d: identity %s is %s, another start got %s", i, n, got[i][n].PublicKey, got[0][n].PublicKey)
			}
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(names) {
		t.Errorf("%s holds %d files, want the %d seeds alone", dir, len(entries), len(names))
	}
	for _, e := range entries {
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %s", e.Name(), fi.Mode().Perm())
		}
	}
	again, err := LoadIdentities(dir, names, false)
	if err != nil || again["operator"].PublicKey != got[0]["operator"].PublicKey {
		t.Errorf("read back: %v", err)
	}
	bad := filepath.Join(dir, "flow-to-erp.nk")
	if err := os.WriteFile(bad, []byte("not a seed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentities(dir, names, true); err == nil || !strings.Contains(err.Error(), bad) || strings.Contains(err.Error(), "not a seed") {
		t.Errorf("a file without a seed: %v, want it refused by name, without its content", err)
	}
	if _, err := LoadIdentities(dir, []string{"../escape"}, true); err == nil {
		t.Error("an identity name with a path was accepted")
	}
}
