package flow

import (
	"strings"
	"testing"
)

func TestParseProxyStatus(t *testing.T) {
	tests := []struct {
		name string
		in   string
		kind ErrorKind
		ok   bool
	}{
		{"roam refused", `roam; error=connection_refused; details="flow to 192.0.2.1:80: connection refused"`, Refused, true},
		{"unroutable", `roam; error=destination_ip_unroutable`, Unreachable, true},
		{"unavailable", `proxy; error=destination_unavailable`, Unreachable, true},
		{"not found", `proxy; error=destination_not_found`, Unreachable, true},
		{"dns error", `proxy; error=dns_error; rcode="NXDOMAIN"`, Unreachable, true},
		{"timeout", `roam;error=connection_timeout`, Timeout, true},
		{"dns timeout", `roam; error=dns_timeout`, Timeout, true},
		{"prohibited", `roam; error=destination_ip_prohibited`, Prohibited, true},
		{"request denied", `roam; error=http_request_denied`, Prohibited, true},
		{"limit", `roam; error=connection_limit_reached`, LimitReached, true},
		{"internal", `roam; error=proxy_internal_error`, Other, true},
		{"unknown type", `roam; error=tls_alert_received; alert-id=42`, Other, true},
		{"string error lenient", `roam; error="connection_refused"`, Refused, true},
		{"quoted proxy name", `"my proxy"; error=connection_timeout`, Timeout, true},
		{"first erroring member wins", `origin-side, roam; error=connection_refused, cdn; error=http_protocol_error`, Refused, true},
		{"inner list member", `("a" b);x=1, roam; error=connection_timeout`, Timeout, true},
		{"inner list with error param", `(a b); error=connection_refused`, Refused, true},
		{"last duplicate param wins", `roam; error=connection_refused; error=connection_timeout`, Timeout, true},
		{"duplicate param to non-token", `roam; error=connection_refused; error=5`, Other, false},
		{"numbers bools bytes", `roam; a=1; b=-2.5; c=?1; d=:aGk=:; e; error=connection_refused`, Refused, true},
		{"ows around comma", "a ,\tb; error=connection_refused", Refused, true},
		{"leading and trailing spaces", `  roam; error=connection_refused  `, Refused, true},
		{"escaped string", `roam; details="a \"quoted\" \\ thing"; error=connection_refused`, Refused, true},
		{"no error param", `roam; details="ok"`, Other, false},
		{"boolean error param", `roam; error`, Other, false},
		{"integer error param", `roam; error=5`, Other, false},
		{"empty", ``, Other, false},
		{"trailing comma", `roam; error=connection_refused,`, Other, false},
		{"bad key", `roam; Error=connection_refused`, Other, false},
		{"unterminated string", `roam; details="abc; error=connection_refused`, Other, false},
		{"bad escape", `roam; details="\n"; error=connection_refused`, Other, false},
		{"control in string", "roam; details=\"a\x01\"; error=connection_refused", Other, false},
		{"garbage after item", `roam error=connection_refused`, Other, false},
		{"integer too long", `roam; n=1234567890123456; error=connection_refused`, Other, false},
		{"decimal too many fraction digits", `roam; n=1.2345; error=connection_refused`, Other, false},
		{"decimal trailing dot", `roam; n=1.; error=connection_refused`, Other, false},
		{"decimal int part too long", `roam; n=1234567890123.5; error=connection_refused`, Other, false},
		{"unterminated inner list", `(a b; error=connection_refused`, Other, false},
		{"bad boolean", `roam; b=?2; error=connection_refused`, Other, false},
		{"unterminated bytes", `roam; d=:aGk=; error=connection_refused`, Other, false},
		{"boolean param after error", `a; error=connection_refused; b`, Refused, true},
		{"semicolon list", `a; error=connection_refused b`, Other, false},
		{"tab not allowed in params", "roam;\terror=connection_refused", Other, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind, ok := ParseProxyStatus(tt.in)
			if kind != tt.kind || ok != tt.ok {
				t.Errorf("ParseProxyStatus(%q) = %v, %v; want %v, %v", tt.in, kind, ok, tt.kind, tt.ok)
			}
		})
	}
}

func TestProxyStatusField(t *testing.T) {
	tests := []struct {
		name, proxy string
		kind        ErrorKind
		details     string
		want        string
	}{
		{"default name", "", Refused, "flow to 192.0.2.1:80: connection refused",
			`roam; error=connection_refused; details="flow to 192.0.2.1:80: connection refused"`},
		{"no details", "roam", Timeout, "", `roam; error=connection_timeout`},
		{"escapes", "roam", Prohibited, "a \"b\" \\ c\n\xff", `roam; error=destination_ip_prohibited; details="a \"b\" \\ c??"`},
		{"name not a token", "my proxy", Other, "", `"my proxy"; error=proxy_internal_error`},
		{"name with colon and slash", "a:b/c.example", LimitReached, "", `a:b/c.example; error=connection_limit_reached`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ProxyStatusField(tt.proxy, tt.kind, tt.details)
			if got != tt.want {
				t.Errorf("ProxyStatusField = %q, want %q", got, tt.want)
			}
			if k, ok := ParseProxyStatus(got); !ok || k != tt.kind {
				t.Errorf("ParseProxyStatus(%q) = %v, %v; want %v", got, k, ok, tt.kind)
			}
		})
	}
	long := ProxyStatusField("roam", Refused, strings.Repeat("x", 1000))
	if len(long) > 300 {
		t.Errorf("details not truncated: %d bytes", len(long))
	}
	e := &Error{Kind: Unreachable, Dst: "192.0.2.9:22"}
	if got, want := e.ProxyStatusField("roam"), `roam; error=destination_ip_unroutable; details="flow to 192.0.2.9:22: destination unreachable"`; got != want {
		t.Errorf("Error.ProxyStatusField = %q, want %q", got, want)
	}
}

func FuzzParseProxyStatus(f *testing.F) {
	for k := Other; k <= LimitReached; k++ {
		f.Add(ProxyStatusField("roam", k, "flow to 192.0.2.1:80: "+k.String()), "roam", "details")
	}
	f.Add(`("a" b);x=1, roam; error=connection_timeout`, "x y", "\"\\")
	f.Add(`roam; a=1; b=-2.5; c=?1; d=:aGk=:; e; error=connection_refused`, "", "")
	f.Add(`roam; details="a \"q\" \\"; error=dns_error`, "cdn.example", "\x00\xff")
	f.Fuzz(func(t *testing.T, field, proxy, details string) {
		// Any input: no panic, and a result with ok=false is Other.
		if k, ok := ParseProxyStatus(field); !ok && k != Other {
			t.Fatalf("ParseProxyStatus(%q) = %v, false; want Other when !ok", field, k)
		}
		// Whatever the proxy name and details, what we write parses back
		// to the kind we wrote, alone and as the first member of a list.
		for k := Other; k <= LimitReached; k++ {
			v := ProxyStatusField(proxy, k, details)
			if got, ok := ParseProxyStatus(v); !ok || got != k {
				t.Fatalf("ParseProxyStatus(%q) = %v, %v; want %v, true", v, got, ok, k)
			}
			if got, ok := ParseProxyStatus(v + ", other; error=http_protocol_error"); !ok || got != k {
				t.Fatalf("ParseProxyStatus(%q + member) = %v, %v; want %v, true", v, got, ok, k)
			}
		}
	})
}
