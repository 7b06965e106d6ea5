package layer

import "testing"

func TestExpansionLimit(t *testing.T) {
	for _, c := range []struct {
		env  string
		blob int64
		want int64
		bad  bool
	}{
		{"", 1000, 100*1000 + 1<<30, false},
		{"off", 1000, 0, false},
		{"10", 1000, 10*1000 + 1<<30, false},
		{"10:0", 1000, 10 * 1000, false},
		{"3:2M", 1000, 3*1000 + 2<<20, false},
		{"0:5G", 1 << 40, 5 << 30, false},
		{"x", 1000, 0, true},
		{"10:-1", 1000, 0, true},
		{"10:1Q", 1000, 0, true},
	} {
		t.Setenv(expansionEnv, c.env)
		got, err := ExpansionLimit(c.blob)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("%s=%q, blob %d: limit %d, %v; want %d (error %v)", expansionEnv, c.env, c.blob, got, err, c.want, c.bad)
		}
	}
}
