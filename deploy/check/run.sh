#!/usr/bin/env bash
# Offline checks of deploy/ (no container engine, no cluster, no network):
#  1. systemd-analyze verify of both units (and the client's drop-in), with
#     ExecStart pointed at a freshly built roam, failing on ANY message:
#     verify exits 0 on unknown keys and unparsable values;
#  2. systemd-analyze security --offline: exposure at most 3.0 (of 10);
#  3. systemd-sysusers on the sysusers.d file, into a throwaway root;
#  4. the polkit rule under node, against a stand-in polkit;
#  4b. caps.sh: server (kernel NAT) and client run as nobody with only the
#     units' capabilities and ReadWritePaths= (root; network namespaces);
#  5. the Go module deploy/check: Kubernetes manifests decoded strictly into
#     k8s.io/api types and checked, the Containerfile lint, the example
#     configs (and that every rule can fail);
#  6. `roam validate` on the example configs and the ConfigMap's config, in
#     a sandbox where their paths point into a temporary directory.
# Run from anywhere: bash deploy/check/run.sh. .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d /tmp/roam-deploy-check.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "deploy check FAILED: $*" >&2; exit 1; }

if ! command -v systemd-analyze >/dev/null || ! command -v systemd-sysusers >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
command -v node >/dev/null || fail "node is needed for the polkit rule's test (package nodejs)"

echo "== deploy: build roam for the unit checks"
go build -o "$tmp/roam" ./cmd/roam

echo "== deploy: systemd-analyze verify"
units="$tmp/units"
mkdir -p "$units/roam-client@.service.d"
for u in roam-server.service roam-client@.service; do
  grep -q '^ExecStart=/usr/local/bin/roam ' "deploy/systemd/$u" || fail "$u: ExecStart is not /usr/local/bin/roam (update this check)"
  sed "s|/usr/local/bin/roam|$tmp/roam|g" "deploy/systemd/$u" >"$units/$u"
done
cp deploy/systemd/roam-client-resolvconf.conf "$units/roam-client@.service.d/resolvconf.conf"
verify() {
  local out
  out=$(systemd-analyze verify --man=no "$@" 2>&1) || fail "systemd-analyze verify $*:"$'\n'"$out"
  [[ -z $out ]] || fail "systemd-analyze verify $* printed warnings (it exits 0 on unknown keys and bad values):"$'\n'"$out"
}
verify "$units/roam-server.service"
verify "$units/roam-client@ci.service" # the template, with its drop-in
# verify must fail on what it is for: a typo'd key and a missing binary.
sed 's/^ProtectSystem=/ProtectSystm=/' "$units/roam-server.service" >"$tmp/bad.service"
if (verify "$tmp/bad.service") 2>/dev/null; then fail "the verify check passed a unit with an unknown key"; fi
sed "s|$tmp/roam|$tmp/no-such-roam|" "$units/roam-server.service" >"$tmp/bad.service"
if (verify "$tmp/bad.service") 2>/dev/null; then fail "the verify check passed a unit whose binary does not exist"; fi
echo "ok: roam-server.service, roam-client@.service (+ resolvconf drop-in)"

echo "== deploy: systemd-analyze security (exposure <= 3.0)"
for u in roam-server.service roam-client@ci.service; do
  out=$(cd "$units" && systemd-analyze security --offline=true --threshold=30 --no-pager "$u" 2>&1) ||
    fail "$u: exposure above 3.0:"$'\n'"$(tail -5 <<<"$out")"
  tail -1 <<<"$out"
done

echo "== deploy: systemd-sysusers"
mkdir -p "$tmp/root/etc" "$tmp/root/usr/lib/sysusers.d"
cp deploy/systemd/roam.sysusers.conf "$tmp/root/usr/lib/sysusers.d/roam.conf"
out=$(systemd-sysusers --root="$tmp/root" 2>&1) || fail "systemd-sysusers roam.sysusers.conf:"$'\n'"$out"
grep -v '^Creating ' <<<"$out" && fail "systemd-sysusers complained about roam.sysusers.conf"
grep -q '^roam:x:[0-9]*:[0-9]*:[^:]*:/var/lib/roam:/usr/sbin/nologin$' "$tmp/root/etc/passwd" ||
  fail "roam.sysusers.conf did not create the user roam: $(cat "$tmp/root/etc/passwd")"

echo "== deploy: polkit rule"
node deploy/check/polkit_test.js

echo "== deploy: the units' capabilities suffice (root; two network namespaces)"
for c in ip nft ping setpriv unshare; do command -v $c >/dev/null || fail "$c is needed (iproute2, nftables, iputils-ping, util-linux)"; done
bash deploy/check/caps.sh "$tmp/roam"

echo "== deploy: manifests, container file, configs (go -C deploy/check test)"
go -C deploy/check vet ./...
go -C deploy/check test -count=1 ./...

echo "== deploy: roam validate on the example configs"
vout=$("$tmp/roam" validate 2>&1 || true)
if grep -q 'unknown command' <<<"$vout"; then
  # roam validate arrives with the config-file work; before it there is
  # nothing to run, and CI must not pretend it ran.
  if [[ ${CI:-} == true ]]; then fail "this roam has no validate command"; fi
  echo "skipped: this roam has no validate command yet"
else
  sb="$tmp/sandbox"
  mkdir -p "$sb/etc/roam/state" "$sb/var/lib/roam" "$sb/run/roam"
  "$tmp/roam" token >"$sb/etc/roam/client-office.token"
  cp "$sb/etc/roam/client-office.token" "$sb/etc/roam/state/tokens"
  : >"$sb/etc/roam/state/revoked"
  out=$("$tmp/roam" token issue --state-dir "$sb/etc/roam/state" --user ci 2>&1) || fail "roam token issue:"$'\n'"$out"
  # The ConfigMap's server.toml: the block under "server.toml: |".
  awk '/^  server.toml: \|$/ {on=1; next} on && /^    / {print substr($0, 5); next} on && /^$/ {print; next} on {exit}' \
    deploy/k8s/configmap.yaml >"$tmp/k8s-server.toml"
  [[ -s $tmp/k8s-server.toml ]] || fail "no server.toml in deploy/k8s/configmap.yaml"
  for f in deploy/config/server.toml deploy/config/client.toml "$tmp/k8s-server.toml"; do
    sed -e "s|\"/etc/roam/|\"$sb/etc/roam/|g" -e "s|\"/var/lib/roam|\"$sb/var/lib/roam|g" \
      -e "s|\"/run/roam/|\"$sb/run/roam/|g" "$f" >"$tmp/validate.toml"
    out=$("$tmp/roam" validate "$tmp/validate.toml" 2>&1) || fail "roam validate $f:"$'\n'"$out"
    echo "$f: $out"
  done
fi
echo "== deploy checks passed"
