#!/usr/bin/env bash
# The units' central claim, tested: a server with kernel NAT and a client
# run as an unprivileged user with nothing but the capabilities of
# roam-server.service / roam-client@.service (CapabilityBoundingSet=), with
# NoNewPrivileges and /proc/sys read-only except the units' ReadWritePaths=
# (what ProtectKernelTunables= plus ReadWritePaths= make), set up the
# tunnel, carry a ping through it and remove everything on SIGTERM.
#
# Two network namespaces joined by a veth pair, all created here (prefix
# roamcaps-) and deleted on exit, also on failure; no traffic leaves them.
# Needs root; skips without it, fails with CI=true.
#   bash deploy/check/caps.sh ROAM_BINARY
set -euo pipefail
roam=$(realpath "$1")
deploy=$(cd "$(dirname "$0")/.." && pwd)
fail() { echo "caps check FAILED: $*" >&2; exit 1; }
if [[ $(id -u) != 0 ]]; then
  [[ ${CI:-} == true ]] && fail "needs root"
  echo "skipped: needs root"; exit 0
fi

# What the units grant.
unit_caps() { sed -n 's/^CapabilityBoundingSet=//p' "$deploy/systemd/$1"; }
unit_rw() { sed -n 's/^ReadWritePaths=//p' "$deploy/systemd/$1"; }
setpriv_caps() { # "CAP_NET_ADMIN CAP_X" -> "+net_admin,+x"
  local out=() c
  for c in $1; do c=${c#CAP_}; out+=("+${c,,}"); done
  (IFS=,; echo "${out[*]}")
}
srv_caps=$(setpriv_caps "$(unit_caps roam-server.service)")
cli_caps=$(setpriv_caps "$(unit_caps roam-client@.service)")
[[ -n $srv_caps && -n $cli_caps ]] || fail "no CapabilityBoundingSet= in the units"
grep -q '^User=roam$' "$deploy/systemd/roam-server.service" || fail "roam-server.service does not run as User=roam (update this check)"

tmp=$(mktemp -d /tmp/roamcaps.XXXXXX)
chmod 0755 "$tmp"
nss=roamcaps-s-$$ nsc=roamcaps-c-$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  ip netns del "$nss" 2>/dev/null || true
  ip netns del "$nsc" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add "$nss"
ip netns add "$nsc"
ip link add rcap$$a type veth peer name rcap$$b
ip link set rcap$$a netns "$nss"
ip link set rcap$$b netns "$nsc"
ip -n "$nss" addr add 10.233.0.1/24 dev rcap$$a
ip -n "$nsc" addr add 10.233.0.2/24 dev rcap$$b
for ns in "$nss" "$nsc"; do
  ip -n "$ns" link set lo up
done
ip -n "$nss" link set rcap$$a up
ip -n "$nsc" link set rcap$$b up

# A TUN clone node with udev's usual mode 0666 (the host's may be 0600),
# bound over /dev/net/tun inside the sandbox only.
mknod -m 0666 "$tmp/tun" c 10 200
mkdir -m 0700 "$tmp/state" && chown nobody: "$tmp/state"

# sandboxed NS "RW PATHS" CAPS CMD...: CMD as nobody in NS with only CAPS
# (ambient, bounding set, no new privileges) and /proc/sys read-only but
# for RW PATHS, in a private mount namespace.
sandboxed() {
  local ns=$1 rw=$2 caps=$3
  shift 3
  exec ip netns exec "$ns" unshare -m bash -c '
    set -e
    mount --make-rprivate /
    mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
    for f in '"$rw"'; do
      opt=0; [[ $f == -* ]] && { f=${f#-}; opt=1; }
      if [[ -e $f ]]; then mount --bind "$f" "$f" && mount -o remount,bind,rw "$f"
      elif ((!opt)); then echo "no $f" >&2; exit 1; fi
    done
    mount --bind '"$tmp/tun"' /dev/net/tun
    exec setpriv --reuid 65534 --regid 65534 --clear-groups --no-new-privs \
      --inh-caps=-all,'"$caps"' --ambient-caps='"$caps"' --bounding-set=-all,'"$caps"' "$@"' _ "$@"
}

sandboxed "$nss" "$(unit_rw roam-server.service)" "$srv_caps" \
  "$roam" server --nat kernel --tun roamcaps0 --state-dir "$tmp/state" --listen 10.233.0.1:4433 --web=false \
  >"$tmp/server.log" 2>&1 &
spid=$!
pids+=("$spid")
for _ in $(seq 100); do
  grep -q 'Connect a client' "$tmp/server.log" && break
  kill -0 "$spid" 2>/dev/null || break
  sleep 0.1
done
grep -q 'kernel NAT ready' "$tmp/server.log" || fail "the server did not set up kernel NAT with $srv_caps:"$'\n'"$(cat "$tmp/server.log")"
[[ $(ip netns exec "$nss" cat /proc/sys/net/ipv4/ip_forward) == 1 ]] || fail "forwarding is not on in the server's namespace"

tok=$(grep -v '^#' "$tmp/state/tokens" | head -1)
pin=$(cat "$tmp/state/pin")
extra=()
# DNS stays off: with nothing to isolate /etc/resolv.conf here the client
# must not manage it.
if "$roam" client -h 2>&1 | grep -q -- '-dns '; then extra+=(--dns off); fi
sandboxed "$nsc" "$(unit_rw roam-client@.service)" "$cli_caps" \
  "$roam" client --server 10.233.0.1:4433 --token "$tok" --pin "$pin" --route 100.96.0.0/16 --tun roamcaps1 "${extra[@]}" \
  >"$tmp/client.log" 2>&1 &
cpid=$!
pids+=("$cpid")
for _ in $(seq 100); do
  grep -q 'tunnel up' "$tmp/client.log" && break
  kill -0 "$cpid" 2>/dev/null || break
  sleep 0.1
done
grep -q 'tunnel up' "$tmp/client.log" || fail "the client did not come up with $cli_caps:"$'\n'"$(cat "$tmp/client.log")"
ip netns exec "$nsc" ping -c 2 -W 2 -q 100.96.0.1 >/dev/null || fail "no ping through the tunnel"

kill -TERM "$cpid"
wait "$cpid" || fail "the client exited with status $? on SIGTERM:"$'\n'"$(tail -5 "$tmp/client.log")"
kill -TERM "$spid"
wait "$spid" || fail "the server exited with status $? on SIGTERM:"$'\n'"$(tail -5 "$tmp/server.log")"
[[ -z $(ip netns exec "$nss" nft list tables) ]] || fail "the server left an nftables table"
[[ -z $(ip netns exec "$nsc" nft list tables) ]] || fail "the client left an nftables table"
[[ $(ip netns exec "$nss" cat /proc/sys/net/ipv4/ip_forward) == 0 ]] || fail "the server did not restore ip_forward"
ip -n "$nsc" rule | grep -q 'lookup main suppress_prefixlength 0' && fail "the client left its policy rules"
echo "ok: server (kernel NAT) and client as nobody with only ${srv_caps//+/}, /proc/sys read-only but ReadWritePaths=; cleaned up on SIGTERM"
