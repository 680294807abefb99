#!/usr/bin/env bash
# roaming.sh -- Roam's roaming numbers, and wireguard-go's for comparison, on
# the shared two-path topology (topo.sh: nb-client / nb-server / nb-inet).
#
#   (a) delivery gap at a link switch: SWITCHES moves of the client between
#       path 1 and path 2 (2, 1, 2, ...; `topo.sh migrate N`: the new link
#       comes up and takes the route to the server, then the old link goes
#       down) while an ICMP ping-pong runs through the tunnel every 5 ms
#       (`ping -D -i 0.005`). Gap of one switch = from the moment
#       `topo.sh migrate` returned (new address and route in place) to the
#       first reply received after it. min/median/max over all switches.
#   (b) roam only: reconnect after a server crash: SIGKILL the server, start
#       it again after RESTART_DELAY s with the same state dir; reconnect =
#       from the restarted server's "roam server ready" log line (it accepts
#       from then on) to the first ping reply through the tunnel; also from
#       its first "session started" (the accept of the new connection) and
#       from the kill. min/median/max over RESTARTS.
#   (c) the same switches with wireguard-go (run-anchor.sh KEEP=1 wg).
#
#   sudo cmd/bench/roaming.sh
#   SWITCHES=10 SETTLE=3 RESTARTS=3 RESTART_DELAY=2 ROUNDS=1 ONLY=roam|wg cmd/bench/roaming.sh
#
# ROUNDS>1 interleaves roam and wg rounds (the host is shared and noisy) and
# pools the switches. Prints one summary line per system; details on stderr and
# in /tmp/netbench/roaming/, the summary also in /tmp/netbench/results/roam-roaming.txt.
# Needs the shared bench kit (topo.sh, run-anchor.sh, nbsvc.go) in ../shared/bench
# or BENCH_DIR. Refuses to run while another nb-* topology is up (FORCE=1 tears it down).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BENCH_DIR=${BENCH_DIR:-$(cd "$REPO/../shared/bench" 2>/dev/null && pwd || true)}
[[ -x $BENCH_DIR/topo.sh ]] || { echo "roaming.sh: set BENCH_DIR to the folder with topo.sh (../shared/bench)" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "roaming.sh: run as root (sudo $0)" >&2; exit 2; }
SWITCHES=${SWITCHES:-10} SETTLE=${SETTLE:-3} RESTARTS=${RESTARTS:-3} RESTART_DELAY=${RESTART_DELAY:-2}
ROUNDS=${ROUNDS:-1} ONLY=${ONLY:-}
export NB_BIN=${NB_BIN:-/tmp/netbench/bin} NB_RUN=${NB_RUN:-/tmp/netbench/run}
TOPO="$BENCH_DIR/topo.sh" BIN=$NB_BIN RUN=$NB_RUN
W=/tmp/netbench/roaming RES=/tmp/netbench/results
mkdir -p "$BIN" "$RUN" "$W" "$RES"
INET=10.201.0.2 SRV=192.0.2.1
for t in jq nft ping iperf3; do command -v $t >/dev/null || { echo "missing $t (apt-get install --no-install-recommends jq nftables iputils-ping iperf3)" >&2; exit 1; }; done
if ip netns list | grep -qw nb-client; then
  [[ ${FORCE:-0} == 1 ]] || { echo "roaming.sh: the nb-* topology is already up (someone else's benchmark?); FORCE=1 tears it down" >&2; exit 1; }
fi

say() { echo "[roaming] $*" >&2; }
now() { echo "$EPOCHREALTIME"; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN{ printf "%.1f\n", (b - a) * 1000 }'; }
stats() { # numbers on stdin -> "min=.. med=.. max=.." (NA if none)
  awk '/^[0-9.]+$/{print}' | sort -g | awk '{a[NR]=$1} END{
    if (NR == 0) { print "min=NA med=NA max=NA"; exit }
    med = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2
    printf "min=%.1f med=%.1f max=%.1f", a[1], med, a[NR] }'
}
logtime() { # first slog line of file $1 with msg $2 -> epoch seconds (ms precision), or empty
  local ts
  ts=$(grep -m1 -E "msg=\"?$2\"?( |$)" "$1" 2>/dev/null | sed -n 's/^time=\([^ ]*\) .*/\1/p')
  [[ -n $ts ]] && date -d "$ts" +%s.%N
  return 0
}
first_reply_after() { # pingfile T [until] -> epoch of the first reply received after T (before until), or empty
  awk -v t="$2" -v u="${3:-1e18}" '/bytes from/ { ts = substr($1, 2, length($1) - 2) + 0; if (ts > t && ts < u) { printf "%.6f\n", ts; exit } }' "$1"
}

echo "[roaming] building roam" >&2
(cd "$REPO" && go build -o "$BIN/roam" ./cmd/roam)
[[ -x $BIN/nbsvc && $BENCH_DIR/nbsvc.go -ot $BIN/nbsvc ]] || (cd "$BENCH_DIR" && GOFLAGS= go build -o "$BIN/nbsvc" nbsvc.go)

PING_PID=""
cleanup() {
  [[ -n $PING_PID ]] && kill "$PING_PID" 2>/dev/null || true
  "$TOPO" down >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# background load from other work on this shared host, before we start
h0=$(awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat); sleep 2
h1=$(awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
BG=$(awk -v a="$h0" -v b="$h1" 'BEGIN{split(a,x," ");split(b,y," "); printf "%.0f", 200*(y[1]-x[1])/(y[2]-x[2])}')
say "background host busy: ${BG}% (of 200%)"

start_ping() { # file: ICMP ping-pong through the tunnel every 5 ms, with receive timestamps
  ip netns exec nb-client ping -D -O -n -i 0.005 -W 1 $INET >"$1" 2>&1 &
  PING_PID=$!
  sleep 0.5
}
stop_ping() { [[ -n $PING_PID ]] && kill -INT "$PING_PID" 2>/dev/null; wait "$PING_PID" 2>/dev/null || true; PING_PID=""; }

wait_tunnel() { # the tunnel carries pings
  for _ in $(seq 50); do ip netns exec nb-client ping -c 1 -W 1 $INET >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

# switches NAME CLIENTLOG: SWITCHES moves while pinging; appends gaps (ms, or "lost") to $W/NAME.gaps
switches() {
  local name=$1 clog=${2:-}
  local pf="$W/$name-ping.txt" sw="$W/$name-switches.txt" to t
  "$TOPO" path2 up
  ip -n nb-client link set nb-c2 down # link 2 appears only at the first switch, like the later ones
  : >"$sw"
  start_ping "$pf"
  for i in $(seq 1 "$SWITCHES"); do
    to=$((i % 2 == 1 ? 2 : 1))
    "$TOPO" migrate $to 2>/dev/null
    t=$(now)
    echo "$t $to" >>"$sw"
    sleep "$SETTLE"
  done
  stop_ping
  local n=0 ts next gap
  mapfile -t T < <(cut -d' ' -f1 "$sw")
  for i in "${!T[@]}"; do
    next=${T[$((i + 1))]:-1e18}
    ts=$(first_reply_after "$pf" "${T[$i]}" "$next")
    if [[ -n $ts ]]; then gap=$(ms "${T[$i]}" "$ts"); else gap=lost; fi
    n=$((n + 1))
    say "$name switch $n (to path $(sed -n "$((i + 1))p" "$sw" | cut -d' ' -f2)): first reply after ${gap} ms"
    echo "$gap" >>"$W/$name.gaps"
  done
  if [[ -n $clog ]]; then
    echo "$(grep -cE 'msg="path changed"' "$clog" || true) $(grep -cE 'msg="?reconnected"?( |$)' "$clog" || true) $(grep -cE 'msg="connection lost"' "$clog" || true)" >>"$W/$name.events"
  fi
}

roam_server() { # start (or restart) the roam server in nb-server
  ip netns exec nb-server "$BIN/roam" server --listen $SRV:4433 --state-dir "$W/state" --tokens "$W/state/tokens" >>"$RUN/roam-server.log" 2>&1 &
  echo $! >"$RUN/roam-server.pid"
  disown $! # no "Killed" message from the shell when (b) crashes it
}

roam_round() {
  "$TOPO" down >/dev/null 2>&1 || true
  "$TOPO" up >/dev/null 2>&1
  rm -rf "$W/state"; mkdir -p "$W/state"
  : >"$RUN/roam-server.log"; : >"$RUN/roam-client.log"
  local tok; tok=$("$BIN/roam" token)
  printf '%s\n' "$tok" >"$W/state/tokens"
  roam_server
  for _ in $(seq 100); do [[ -s $W/state/pin ]] && grep -qs "roam client" "$RUN/roam-server.log" && break; sleep 0.1; done
  ip netns exec nb-client "$BIN/roam" client --server $SRV:4433 --token "$tok" --pin "$(cat "$W/state/pin")" \
    --route 10.201.0.0/24 >"$RUN/roam-client.log" 2>&1 &
  echo $! >"$RUN/roam-client.pid"
  wait_tunnel || { say "roam did not come up"; cat "$RUN"/roam-*.log >&2; exit 1; }

  switches roam "$RUN/roam-client.log"
  if ! kill -0 "$(cat "$RUN/roam-client.pid")" 2>/dev/null; then
    say "the roam client exited during the switches:"; tail -5 "$RUN/roam-client.log" >&2
    cp "$RUN"/roam-*.log "$W/" 2>/dev/null || true
    return
  fi

  # (b) server crash and restart, while pinging
  local pf="$W/roam-restart-ping.txt" k tk ts tr tsess tfirst nrec
  start_ping "$pf"
  for k in $(seq 1 "$RESTARTS"); do
    wait_tunnel || { say "restart $k: tunnel not up before the kill"; break; }
    nrec=$(grep -cE 'msg="?reconnected"?( |$)' "$RUN/roam-client.log" || true)
    kill -9 "$(cat "$RUN/roam-server.pid")"
    tk=$(now)
    sleep "$RESTART_DELAY"
    : >"$RUN/roam-server.log"
    ts=$(now)
    roam_server
    for _ in $(seq 600); do # up to 60 s for the client's next "reconnected"
      [[ $(grep -cE 'msg="?reconnected"?( |$)' "$RUN/roam-client.log" || true) -gt $nrec ]] && break
      kill -0 "$(cat "$RUN/roam-client.pid")" 2>/dev/null || break
      sleep 0.1
    done
    sleep 0.5
    tr=$(logtime "$RUN/roam-server.log" "roam server ready")
    tsess=$(logtime "$RUN/roam-server.log" "session started")
    tfirst=$(first_reply_after "$pf" "$ts")
    if [[ -z $tr || -z $tfirst ]]; then
      say "restart $k: no reconnect (server ready=${tr:-never}, first reply=${tfirst:-never})"
      tail -5 "$RUN/roam-server.log" "$RUN/roam-client.log" >&2
      echo lost >>"$W/roam.reconnect"
      kill -0 "$(cat "$RUN/roam-client.pid")" 2>/dev/null || break
      continue
    fi
    local took; took=$(grep -E 'msg="?reconnected"?( |$)' "$RUN/roam-client.log" | tail -1 | sed -n 's/.* took=\([^ ]*\).*/\1/p')
    say "restart $k: server ready $(ms "$ts" "$tr") ms after its start; first reply $(ms "$tr" "$tfirst") ms after ready," \
      "$( [[ -n $tsess ]] && echo "$(ms "$tsess" "$tfirst") ms after its first accept (session started)," )" \
      "$(ms "$tk" "$tfirst") ms after the kill; client says took=${took:-?}"
    ms "$tr" "$tfirst" >>"$W/roam.reconnect"
    [[ -n $tsess ]] && ms "$tsess" "$tfirst" >>"$W/roam.accept"
    ms "$tk" "$tfirst" >>"$W/roam.outage"
  done
  stop_ping
  cp "$RUN"/roam-*.log "$W/" 2>/dev/null || true
  kill -TERM "$(cat "$RUN/roam-client.pid")" "$(cat "$RUN/roam-server.pid")" 2>/dev/null || true
  sleep 0.5
  "$TOPO" down >/dev/null 2>&1 || true
}

wg_round() {
  command -v wg >/dev/null || { say "wg: wireguard-tools missing, skipped"; return; }
  "$TOPO" down >/dev/null 2>&1 || true
  NAME=wg KEEP=1 REPS=1 TESTS=tcp1 DUR=2 "$BENCH_DIR/run-anchor.sh" wg >/dev/null 2>"$W/wg-setup.log" ||
    { say "wireguard-go setup failed:"; tail -5 "$W/wg-setup.log" >&2; return; }
  wait_tunnel || { say "wireguard-go tunnel not up"; return; }
  switches wg
  "$TOPO" down >/dev/null 2>&1 || true
}

rm -f "$W"/*.gaps "$W"/*.events "$W"/roam.reconnect "$W"/roam.accept "$W"/roam.outage
for r in $(seq 1 "$ROUNDS"); do
  for who in roam wg; do
    [[ -n $ONLY && $ONLY != "$who" ]] && continue
    say "round $r: $who"
    ${who}_round
  done
done

out=""
for who in roam wg; do
  [[ -n $ONLY && $ONLY != "$who" ]] && continue
  [[ -f $W/$who.gaps ]] || { out+="$who: no result"$'\n'; continue; }
  n=$(wc -l <"$W/$who.gaps"); lost=$(grep -c lost "$W/$who.gaps" || true)
  l="$who: switch gap $(stats <"$W/$who.gaps") ms (n=$n lost=$lost)"
  if [[ $who == roam ]]; then
    ev=$(awk '{p+=$1; r+=$2; c+=$3} END{printf "path_changed=%d reconnected=%d connection_lost=%d", p, r, c}' "$W/roam.events" 2>/dev/null || echo "events=NA")
    l+=" $ev"
    if [[ -f $W/roam.reconnect ]]; then
      touch "$W/roam.accept" "$W/roam.outage"
      l+="; restart: ready->first $(stats <"$W/roam.reconnect") ms, accept->first $(stats <"$W/roam.accept") ms,"
      l+=" kill->first $(stats <"$W/roam.outage") ms (n=$(wc -l <"$W/roam.reconnect") lost=$(grep -c lost "$W/roam.reconnect" || true), delay ${RESTART_DELAY}s)"
    fi
  fi
  out+="$l bg=${BG}%"$'\n'
done
printf '%s' "$out" | tee -a "$RES/roam-roaming.txt"
echo "($ROUNDS round(s), $SWITCHES switches each, ${SETTLE}s apart, ping every 5 ms, $(date -u +%FT%TZ))" | tee -a "$RES/roam-roaming.txt"
