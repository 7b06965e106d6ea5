package testimage

import (
	"fmt"
	"slices"
	"testing"
)

func TestCasesAreWellFormed(t *testing.T) {
	rules, refused := RuleCases(), RefusedCases()
	seen := map[string]bool{}
	covered := map[string]bool{}
	for _, c := range append(rules, refused...) {
		if seen[c.Name] {
			t.Errorf("two cases are named %s", c.Name)
		}
		seen[c.Name] = true
		covered[c.Rule] = true
		if len(c.Layers) == 0 {
			t.Errorf("%s has no layers", c.Name)
		}
	}
	for i := 1; i <= 10; i++ {
		if !covered[fmt.Sprint(i)] {
			t.Errorf("no case for rule %d", i)
		}
	}
	for _, r := range []string{"attributes", "refused"} {
		if !covered[r] {
			t.Errorf("no %s case", r)
		}
	}
	for _, c := range rules {
		if c.Rule == "refused" || c.BadEntry != "" {
			t.Errorf("%s is a rule case but names a bad entry %q", c.Name, c.BadEntry)
		}
	}
	for _, c := range refused {
		if c.Rule != "refused" || c.BadLayer >= len(c.Layers) {
			t.Errorf("%s: rule %q, bad layer %d of %d", c.Name, c.Rule, c.BadLayer, len(c.Layers))
			continue
		}
		if !slices.ContainsFunc(c.Layers[c.BadLayer].Entries, func(e Entry) bool { return e.Name == c.BadEntry }) {
			t.Errorf("%s: layer %d has no entry %q", c.Name, c.BadLayer, c.BadEntry)
		}
	}
}

func TestCasesAreFresh(t *testing.T) {
	a := RuleCases()
	a[0].Layers[0].Entries[0].Name = "changed"
	if b := RuleCases(); b[0].Layers[0].Entries[0].Name == "changed" {
		t.Error("RuleCases returned values shared with an earlier call")
	}
}

func TestWithXattrCopies(t *testing.T) {
	base := File("f", "").WithXattr("user.a", "1")
	derived := base.WithXattr("user.b", "2")
	if len(base.Xattrs) != 1 || len(derived.Xattrs) != 2 {
		t.Errorf("base has %v, derived %v: the map is shared", base.Xattrs, derived.Xattrs)
	}
}
