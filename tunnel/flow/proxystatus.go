package flow

import "strings"

// ProxyStatusName is the intermediary name Roam's server puts in its
// Proxy-Status field members.
const ProxyStatusName = "roam"

// maxDetails bounds the details parameter ProxyStatusField writes.
const maxDetails = 256

// ProxyStatusField returns an RFC 9209 Proxy-Status field value reporting
// kind: `<proxy>; error=<type>; details="<details>"`, for example
// `roam; error=connection_refused; details="flow to 192.0.2.1:80: connection
// refused"`. proxy names the intermediary; it is written as an sf-token if
// it is one, else as an sf-string ("" becomes ProxyStatusName). details is
// optional (empty: no details parameter); it is cut to 256 bytes and every
// byte outside printable ASCII becomes '?'. It is sent to the client, so it
// must not reveal what the client may not know.
func ProxyStatusField(proxy string, kind ErrorKind, details string) string {
	if proxy == "" {
		proxy = ProxyStatusName
	}
	var b strings.Builder
	if isToken(proxy) {
		b.WriteString(proxy)
	} else {
		appendSFString(&b, proxy)
	}
	b.WriteString("; error=")
	b.WriteString(kind.ProxyStatus())
	if details != "" {
		b.WriteString("; details=")
		appendSFString(&b, details[:min(len(details), maxDetails)])
	}
	return b.String()
}

// ProxyStatusField returns the Proxy-Status field value for a response
// refusing this flow, with e.Error() as details (see the package-level
// ProxyStatusField for what proxy and details become).
func (e *Error) ProxyStatusField(proxy string) string {
	return ProxyStatusField(proxy, e.Kind, e.Error())
}

// appendSFString writes s as an RFC 8941 sf-string: in double quotes, with
// '"' and '\' escaped and any byte outside %x20-7E replaced by '?'.
func appendSFString(b *strings.Builder, s string) {
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c > 0x7e:
			b.WriteByte('?')
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
}

// ParseProxyStatus reads the kind of a failed flow from an RFC 9209
// Proxy-Status field value (several field lines joined with ", ", as
// strings.Join(h.Values("Proxy-Status"), ", ") gives). The value is parsed
// strictly as an RFC 8941 List; a value that does not parse yields ok =
// false, as RFC 8941 asks (the whole field is ignored). Otherwise the first
// member (the intermediary nearest the destination) that has an error
// parameter (a token, or leniently a string) decides: connection_refused →
// Refused; destination_ip_unroutable, destination_unavailable,
// destination_not_found, dns_error → Unreachable; connection_timeout,
// dns_timeout → Timeout; destination_ip_prohibited, http_request_denied →
// Prohibited; connection_limit_reached → LimitReached; any other type →
// Other. ok is false if no member has an error parameter.
func ParseProxyStatus(v string) (kind ErrorKind, ok bool) {
	p := sfParser{s: v}
	errType, found, valid := p.list()
	if !valid || !found {
		return Other, false
	}
	switch errType {
	case "connection_refused":
		return Refused, true
	case "destination_ip_unroutable", "destination_unavailable", "destination_not_found", "dns_error":
		return Unreachable, true
	case "connection_timeout", "dns_timeout":
		return Timeout, true
	case "destination_ip_prohibited", "http_request_denied":
		return Prohibited, true
	case "connection_limit_reached":
		return LimitReached, true
	}
	return Other, true
}

// sfParser is a validating RFC 8941 §4.2 parser for a List that keeps only
// the value of the first "error" parameter of a list member. Nothing it
// parses is allocated except a string value that contains escapes.
type sfParser struct {
	s string
	i int
}

func (p *sfParser) eof() bool { return p.i >= len(p.s) }

func (p *sfParser) peek() byte {
	if p.eof() {
		return 0
	}
	return p.s[p.i]
}

func (p *sfParser) skipSP() {
	for !p.eof() && p.s[p.i] == ' ' {
		p.i++
	}
}

func (p *sfParser) skipOWS() {
	for !p.eof() && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

// list parses the whole input as an sf-list (§4.2.1), surrounded by
// optional spaces. It returns the first member's error parameter that was
// found, and whether the input is valid.
func (p *sfParser) list() (errType string, found, valid bool) {
	p.skipSP()
	for !p.eof() {
		var e string
		var f bool
		if p.peek() == '(' {
			f, e, valid = p.innerList()
		} else {
			f, e, valid = p.item()
		}
		if !valid {
			return "", false, false
		}
		if f && !found {
			errType, found = e, true
		}
		p.skipOWS()
		if p.eof() {
			return errType, found, true
		}
		if p.s[p.i] != ',' {
			return "", false, false
		}
		p.i++
		p.skipOWS()
		if p.eof() { // trailing comma
			return "", false, false
		}
	}
	return errType, found, true
}

// innerList parses "(" items ")" parameters (§4.2.1.2).
func (p *sfParser) innerList() (found bool, errType string, ok bool) {
	p.i++ // '('
	for {
		p.skipSP()
		if p.eof() {
			return false, "", false
		}
		if p.s[p.i] == ')' {
			p.i++
			return p.params()
		}
		if _, ok := p.bareItem(); !ok {
			return false, "", false
		}
		if _, _, ok := p.params(); !ok {
			return false, "", false
		}
		if c := p.peek(); c != ' ' && c != ')' {
			return false, "", false
		}
	}
}

// item parses a bare item and its parameters (§4.2.3).
func (p *sfParser) item() (found bool, errType string, ok bool) {
	if _, ok := p.bareItem(); !ok {
		return false, "", false
	}
	return p.params()
}

// params parses parameters (§4.2.3.2), returning the value of an "error"
// parameter whose value is a token or string. If a key repeats, RFC 8941
// keeps the last value.
func (p *sfParser) params() (found bool, errType string, ok bool) {
	for p.peek() == ';' {
		p.i++
		p.skipSP()
		key, ok := p.key()
		if !ok {
			return false, "", false
		}
		var v sfValue
		if p.peek() == '=' {
			p.i++
			if v, ok = p.bareItem(); !ok {
				return false, "", false
			}
		} else {
			v = sfValue{kind: sfBool}
		}
		if key == "error" {
			found, errType = v.kind == sfToken || v.kind == sfString, v.str
		}
	}
	return found, errType, true
}

// key parses an RFC 8941 key: ( lcalpha / "*" ) *( lcalpha / DIGIT / "_"
// / "-" / "." / "*" ).
func (p *sfParser) key() (string, bool) {
	start := p.i
	if c := p.peek(); !(c >= 'a' && c <= 'z' || c == '*') {
		return "", false
	}
	p.i++
	for !p.eof() {
		c := p.s[p.i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '*') {
			break
		}
		p.i++
	}
	return p.s[start:p.i], true
}

type sfKind uint8

const (
	sfNumber sfKind = iota
	sfString
	sfToken
	sfBytes
	sfBool
)

// sfValue is a parsed bare item; str is set for strings and tokens.
type sfValue struct {
	kind sfKind
	str  string
}

// bareItem parses an integer, decimal, string, token, byte sequence or
// boolean (§4.2.3.1).
func (p *sfParser) bareItem() (sfValue, bool) {
	c := p.peek()
	switch {
	case c == '-' || c >= '0' && c <= '9':
		return sfValue{kind: sfNumber}, p.number()
	case c == '"':
		s, ok := p.str()
		return sfValue{kind: sfString, str: s}, ok
	case c == '*' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		return sfValue{kind: sfToken, str: p.token()}, true
	case c == ':':
		return sfValue{kind: sfBytes}, p.bytes()
	case c == '?':
		return sfValue{kind: sfBool}, p.boolean()
	}
	return sfValue{}, false
}

// number parses an sf-integer (at most 15 digits) or sf-decimal (at most 12
// integer and 1 to 3 fraction digits) (§4.2.4).
func (p *sfParser) number() bool {
	if p.peek() == '-' {
		p.i++
	}
	if c := p.peek(); c < '0' || c > '9' {
		return false
	}
	n, frac, decimal := 0, 0, false // n: characters taken, '.' included
	for ; !p.eof(); p.i++ {
		c := p.s[p.i]
		if c == '.' && !decimal {
			if n > 12 {
				return false
			}
			decimal = true
		} else if c < '0' || c > '9' {
			break
		} else if decimal {
			frac++
		}
		n++
		if !decimal && n > 15 || decimal && n > 16 {
			return false
		}
	}
	return !decimal || frac >= 1 && frac <= 3
}

// str parses an sf-string (§4.2.5): printable ASCII in double quotes, with
// only \" and \\ as escapes.
func (p *sfParser) str() (string, bool) {
	p.i++ // '"'
	start := p.i
	escaped := false
	for !p.eof() {
		c := p.s[p.i]
		p.i++
		switch {
		case c == '\\':
			if p.eof() {
				return "", false
			}
			if n := p.s[p.i]; n != '"' && n != '\\' {
				return "", false
			}
			p.i++
			escaped = true
		case c == '"':
			s := p.s[start : p.i-1]
			if escaped {
				s = unescapeSF(s)
			}
			return s, true
		case c < 0x20 || c > 0x7e:
			return "", false
		}
	}
	return "", false // no closing quote
}

// unescapeSF removes the backslashes of a validated sf-string body.
func unescapeSF(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// token parses an sf-token (§4.2.6); the first character was checked.
func (p *sfParser) token() string {
	start := p.i
	p.i++
	for !p.eof() && (isTchar(p.s[p.i]) || p.s[p.i] == ':' || p.s[p.i] == '/') {
		p.i++
	}
	return p.s[start:p.i]
}

// bytes parses an sf-binary (§4.2.7): base64 between colons.
func (p *sfParser) bytes() bool {
	p.i++ // ':'
	for !p.eof() {
		c := p.s[p.i]
		p.i++
		switch {
		case c == ':':
			return true
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '+', c == '/', c == '=':
		default:
			return false
		}
	}
	return false
}

// boolean parses ?0 or ?1 (§4.2.8).
func (p *sfParser) boolean() bool {
	p.i++ // '?'
	if c := p.peek(); c == '0' || c == '1' {
		p.i++
		return true
	}
	return false
}

// isTchar reports whether c is an RFC 9110 tchar.
func isTchar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// isToken reports whether s is a valid sf-token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	if c := s[0]; !(c == '*' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isTchar(c) && c != ':' && c != '/' {
			return false
		}
	}
	return true
}
