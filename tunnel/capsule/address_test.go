package capsule

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// h decodes hex written with spaces for readability.
func h(s string) []byte {
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		panic(err)
	}
	return b
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// Byte vectors follow RFC 9484 Figures 7-10 field by field:
// Type, Length, then per entry Request ID (varint), IP Version (8),
// IP Address (32|128), IP Prefix Length (8).
func TestAddressAssignVectors(t *testing.T) {
	tests := []struct {
		name string
		c    AddressAssign
		wire string
	}{
		{"empty", AddressAssign{}, "01 00"},
		{"one IPv4", AddressAssign{[]AssignedAddress{{0, pfx("192.0.2.1/32")}}},
			"01 07  00 04 c0000201 20"},
		{"IPv4 and IPv6", AddressAssign{[]AssignedAddress{{1, pfx("100.96.0.2/32")}, {2, pfx("2001:db8::/64")}}},
			"01 1a  01 04 64600002 20  02 06 20010db8000000000000000000000000 40"},
		{"two-byte Request ID", AddressAssign{[]AssignedAddress{{300, pfx("10.0.0.0/8")}}},
			"01 08  412c 04 0a000000 08"},
		{"refusals", AddressAssign{[]AssignedAddress{{5, pfx("0.0.0.0/32")}, {6, pfx("::/128")}}},
			"01 1a  05 04 00000000 20  06 06 00000000000000000000000000000000 80"},
		{"prefix length 0", AddressAssign{[]AssignedAddress{{0, pfx("0.0.0.0/0")}}},
			"01 07  00 04 00000000 00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := h(tt.wire)
			got, err := tt.c.Append([]byte{0xaa})
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			if got[0] != 0xaa || !bytes.Equal(got[1:], want) {
				t.Fatalf("Append = % x, want aa % x", got, want)
			}
			ty, v, n, err := ParseCapsule(want)
			if err != nil || ty != TypeAddressAssign || n != len(want) {
				t.Fatalf("ParseCapsule = %v, %d, %v", ty, n, err)
			}
			p, err := ParseAddressAssign(v)
			if err != nil {
				t.Fatalf("ParseAddressAssign: %v", err)
			}
			if len(p.Addresses) != len(tt.c.Addresses) || (len(p.Addresses) > 0 && !reflect.DeepEqual(p.Addresses, tt.c.Addresses)) {
				t.Fatalf("parsed %+v, want %+v", p.Addresses, tt.c.Addresses)
			}
		})
	}
}

func TestAddressRequestVectors(t *testing.T) {
	tests := []struct {
		name string
		c    AddressRequest
		wire string
	}{
		{"any of each family", AddressRequest{[]RequestedAddress{{1, pfx("0.0.0.0/32")}, {2, pfx("::/128")}}},
			"02 1a  01 04 00000000 20  02 06 00000000000000000000000000000000 80"},
		{"specific IPv4", AddressRequest{[]RequestedAddress{{7, pfx("100.96.0.5/32")}}},
			"02 07  07 04 64600005 20"},
		{"IPv6 /64", AddressRequest{[]RequestedAddress{{64, pfx("fd00:96::/64")}}},
			"02 14  4040 06 fd000096000000000000000000000000 40"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := h(tt.wire)
			got, err := tt.c.Append(nil)
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("Append = % x, want % x", got, want)
			}
			_, v, _, _ := ParseCapsule(want)
			p, err := ParseAddressRequest(v)
			if err != nil {
				t.Fatalf("ParseAddressRequest: %v", err)
			}
			if !reflect.DeepEqual(p.Addresses, tt.c.Addresses) {
				t.Fatalf("parsed %+v, want %+v", p.Addresses, tt.c.Addresses)
			}
		})
	}
}

// A non-minimal varint Request ID is valid (RFC 9484 §2: varints need not
// be minimal) and parses to the same value.
func TestAddressNonMinimalVarint(t *testing.T) {
	p, err := ParseAddressRequest(h("4001 04 0a000001 20"))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Addresses[0]; got.RequestID != 1 || got.Prefix != pfx("10.0.0.1/32") {
		t.Fatalf("got %+v", got)
	}
}

func checkErr(t *testing.T, err error, ty Type, entry int, field, msgPart string) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("%v does not match ErrMalformed", err)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("%T is not *Error", err)
	}
	if e.Type != ty || e.Entry != entry || e.Field != field || !strings.Contains(e.Msg, msgPart) {
		t.Fatalf("got %#v (%q), want type %v entry %d field %q msg containing %q", e, err, ty, entry, field, msgPart)
	}
	if e.HTTP3ErrorCode() != H3MessageError {
		t.Fatalf("code %#x", e.HTTP3ErrorCode())
	}
	if !strings.Contains(err.Error(), ty.String()) {
		t.Fatalf("message %q does not name the capsule", err)
	}
}

func TestParseAddressErrors(t *testing.T) {
	tests := []struct {
		name  string
		ty    Type
		value string
		entry int
		field string
		msg   string
	}{
		{"assign truncated Request ID", TypeAddressAssign, "40", 0, "Request ID", "truncated"},
		{"assign missing version", TypeAddressAssign, "00", 0, "IP Version", "truncated"},
		{"assign version 5", TypeAddressAssign, "00 05 0a000001 20", 0, "IP Version", "must be 4 or 6"},
		{"assign version 0", TypeAddressAssign, "00 00", 0, "IP Version", "must be 4 or 6"},
		{"assign truncated IPv4", TypeAddressAssign, "00 04 0a0000", 0, "IP Address", "truncated"},
		{"assign truncated IPv6", TypeAddressAssign, "00 06 20010db8", 0, "IP Address", "truncated"},
		{"assign missing prefix length", TypeAddressAssign, "00 04 0a000001", 0, "IP Prefix Length", "truncated"},
		{"assign IPv4 /33", TypeAddressAssign, "00 04 0a000001 21", 0, "IP Prefix Length", "33 exceeds 32"},
		{"assign IPv6 /129", TypeAddressAssign, "00 06 20010db8000000000000000000000001 81", 0, "IP Prefix Length", "129 exceeds 128"},
		{"assign host bits IPv4", TypeAddressAssign, "00 04 0a000001 08", 0, "IP Address", "beyond the prefix length"},
		{"assign host bits IPv6", TypeAddressAssign, "00 06 20010db8000000000000000000000001 40", 0, "IP Address", "beyond the prefix length"},
		{"assign second entry bad", TypeAddressAssign, "00 04 0a000001 20  01 04 0a000002 28", 1, "IP Prefix Length", "40 exceeds 32"},
		{"assign trailing byte", TypeAddressAssign, "00 04 0a000001 20  07", 1, "IP Version", "truncated"},
		{"request empty", TypeAddressRequest, "", -1, "", "one or more"},
		{"request ID zero", TypeAddressRequest, "00 04 00000000 20", 0, "Request ID", "must not be zero"},
		{"request ID zero non-minimal", TypeAddressRequest, "4000 04 00000000 20", 0, "Request ID", "must not be zero"},
		{"request duplicate ID", TypeAddressRequest, "01 04 00000000 20  01 06 00000000000000000000000000000000 80", 1, "Request ID", "repeats entry 0"},
		{"request host bits", TypeAddressRequest, "01 04 c0a80101 18", 0, "IP Address", "beyond the prefix length"},
		{"request version 7", TypeAddressRequest, "01 07", 0, "IP Version", "must be 4 or 6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.ty == TypeAddressAssign {
				var c *AddressAssign
				c, err = ParseAddressAssign(h(tt.value))
				if c != nil {
					t.Fatalf("non-nil capsule with error")
				}
			} else {
				var c *AddressRequest
				c, err = ParseAddressRequest(h(tt.value))
				if c != nil {
					t.Fatalf("non-nil capsule with error")
				}
			}
			checkErr(t, err, tt.ty, tt.entry, tt.field, tt.msg)
		})
	}
}

// Duplicate detection switches to a map above 16 entries.
func TestParseAddressRequestManyDuplicates(t *testing.T) {
	var c AddressRequest
	for i := range 40 {
		c.Addresses = append(c.Addresses, RequestedAddress{uint64(i + 1), pfx("0.0.0.0/32")})
	}
	b, err := c.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	_, v, _, _ := ParseCapsule(b)
	if _, err := ParseAddressRequest(v); err != nil {
		t.Fatalf("unique IDs: %v", err)
	}
	c.Addresses[33].RequestID = 20
	_, err = c.Append(nil)
	checkErr(t, err, TypeAddressRequest, 33, "Request ID", "repeats entry 19")
}

func TestAppendAddressErrors(t *testing.T) {
	tests := []struct {
		name  string
		c     interface{ Append([]byte) ([]byte, error) }
		ty    Type
		entry int
		field string
		msg   string
	}{
		{"assign invalid prefix", &AddressAssign{[]AssignedAddress{{0, netip.Prefix{}}}}, TypeAddressAssign, 0, "IP Address", "invalid prefix"},
		{"assign host bits", &AddressAssign{[]AssignedAddress{{0, pfx("10.0.0.1/32")}, {0, pfx("10.0.0.1/24")}}}, TypeAddressAssign, 1, "IP Address", "want 10.0.0.0/24"},
		{"assign huge ID", &AddressAssign{[]AssignedAddress{{1 << 62, pfx("10.0.0.1/32")}}}, TypeAddressAssign, 0, "Request ID", "varint maximum"},
		{"request empty", &AddressRequest{}, TypeAddressRequest, -1, "", "one or more"},
		{"request ID zero", &AddressRequest{[]RequestedAddress{{0, pfx("10.0.0.1/32")}}}, TypeAddressRequest, 0, "Request ID", "must not be zero"},
		{"request duplicate", &AddressRequest{[]RequestedAddress{{3, pfx("10.0.0.1/32")}, {3, pfx("::/128")}}}, TypeAddressRequest, 1, "Request ID", "repeats"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := []byte{1, 2, 3}
			out, err := tt.c.Append(in)
			checkErr(t, err, tt.ty, tt.entry, tt.field, tt.msg)
			if !bytes.Equal(out, in) {
				t.Fatalf("Append changed b on error: % x", out)
			}
		})
	}
}

func TestCapsuleFraming(t *testing.T) {
	payload := bytes.Repeat([]byte{0x45}, 100)
	got := AppendCapsule(nil, TypeDatagram, payload)
	want := append(h("00 4064"), payload...) // 100 needs a 2-byte varint
	if !bytes.Equal(got, want) {
		t.Fatalf("AppendCapsule = % x", got[:4])
	}
	// reserved (greasing) type 0x29*N+0x17 with N=1: 0x40 = 2-byte varint 0x4040
	got = AppendCapsule([]byte{9}, Type(0x40), nil)
	if !bytes.Equal(got, h("09 4040 00")) {
		t.Fatalf("AppendCapsule = % x", got)
	}
	ty, v, n, err := ParseCapsule(h("4040 00 ff"))
	if err != nil || ty != 0x40 || len(v) != 0 || n != 3 {
		t.Fatalf("ParseCapsule = %v %x %d %v", ty, v, n, err)
	}
	for _, b := range []string{"", "40", "01", "01 02 00", "01 4001"} {
		if _, _, _, err := ParseCapsule(h(b)); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("ParseCapsule(%s) err = %v, want ErrUnexpectedEOF", b, err)
		}
	}
}

func TestTypeString(t *testing.T) {
	for ty, want := range map[Type]string{0: "DATAGRAM", 1: "ADDRESS_ASSIGN", 2: "ADDRESS_REQUEST", 3: "ROUTE_ADVERTISEMENT", 0x17: "capsule type 0x17"} {
		if got := ty.String(); got != want {
			t.Errorf("%d: %q, want %q", uint64(ty), got, want)
		}
	}
}
