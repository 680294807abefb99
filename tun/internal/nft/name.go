// Package nft holds the nftables helpers that package tun and its system
// stack (tun/systack) share: the sanitising of table names, the lasting
// netlink socket, the replacement and deletion of whole tables, and the
// interface-name match.
package nft

// Sanitize returns s with every byte outside [A-Za-z0-9_] replaced by '_',
// as the tables' names use it (an interface name may hold '-', '.' and
// more).
func Sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}
