package chunk

import "testing"

func TestParamsValidate(t *testing.T) {
	tests := []struct {
		name string
		p    Params
		ok   bool
	}{
		{"default", DefaultParams(), true},
		{"small", Params{64, 256, 1024}, true},
		{"smallest Avg", Params{64, 128, 256}, true},
		{"largest", Params{1 << 20, 8 << 20, MaxChunkSize}, true},
		{"odd bounds", Params{4095, 16384, 65535}, true},
		{"zero", Params{}, false},
		{"Avg not a power of two", Params{64, 300, 1024}, false},
		{"negative Avg", Params{64, -256, 1024}, false},
		{"Min too small", Params{63, 256, 1024}, false},
		{"Min equals Avg", Params{256, 256, 1024}, false},
		{"Min above Avg", Params{512, 256, 1024}, false},
		{"Max equals Avg", Params{64, 256, 256}, false},
		{"Max above ceiling", Params{1 << 20, 8 << 20, MaxChunkSize + 1}, false},
		{"Avg 16 MiB", Params{1 << 20, 16 << 20, 32 << 20}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.p.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate(%+v) = %v, want ok=%v", tt.p, err, tt.ok)
			}
		})
	}
}

func TestIdentity(t *testing.T) {
	if got, want := DefaultParams().Identity(), "fastcdc2020-nc2-16384-65536-262144"; got != want {
		t.Fatalf("DefaultParams().Identity() = %q, want %q", got, want)
	}
	for _, p := range []Params{DefaultParams(), {64, 256, 1024}, {4095, 16384, 65535}, {1 << 20, 8 << 20, MaxChunkSize}} {
		got, err := ParseIdentity(p.Identity())
		if err != nil || got != p {
			t.Errorf("ParseIdentity(%q) = %+v, %v; want %+v", p.Identity(), got, err, p)
		}
	}
}

func TestParseIdentityRejects(t *testing.T) {
	for _, s := range []string{
		"",
		"fastcdc2020-nc2",
		"fastcdc2020-nc2-",
		"fastcdc2020-nc2-16384-65536",
		"fastcdc2020-nc2-16384-65536-262144-1",
		"fastcdc2020-nc1-16384-65536-262144",
		"fastcdc2020-nc3-16384-65536-262144",
		"fastcdc2016-nc2-16384-65536-262144",
		"fastcdc-16384-65536-262144",
		"FASTCDC2020-nc2-16384-65536-262144",
		"fastcdc2020-nc2-016384-65536-262144",
		"fastcdc2020-nc2-+16384-65536-262144",
		"fastcdc2020-nc2-16384--65536-262144",
		"fastcdc2020-nc2-16384-65536-262144 ",
		"fastcdc2020-nc2-16384-65535-262144",
		"fastcdc2020-nc2-16384-65536-33554432",
		"fastcdc2020-nc2-16384-65536-999999999999999999999",
		"fastcdc2020-nc2-0-65536-262144",
	} {
		if p, err := ParseIdentity(s); err == nil {
			t.Errorf("ParseIdentity(%q) = %+v, want an error", s, p)
		}
	}
}

func TestSmallestCut(t *testing.T) {
	for _, tt := range []struct {
		p    Params
		want int
	}{
		{DefaultParams(), 16384},
		{Params{65, 128, 1023}, 64},
	} {
		if got := tt.p.SmallestCut(); got != tt.want {
			t.Errorf("%+v.SmallestCut() = %d, want %d", tt.p, got, tt.want)
		}
	}
}
