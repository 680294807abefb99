#!/usr/bin/env bash
# bench.sh -- Roam vs wireguard-go on the shared three-namespace topology.
#
# Runs ROUNDS interleaved rounds (roam, roam-flow, wg, roam, ...) of: iperf3
# TCP client->inet (tcp1) and inet->client (rev), a 64-byte TCP
# request/response RTT (nbsvc tcpping) and ICMP ping, and prints one summary
# line per tunnel with the medians, side by side. cpu/cpurev are the CPU % of
# the tunnel's processes (client+server, 100 = one core) during tcp1/rev. For
# roam packet mode, drop1/droprev are the datagrams of the run's data direction
# (client->server for tcp1, server->client for rev) lost inside the receiver's
# quic-go per 10 s: the sender's tx_packets minus the receiver's rx_datagrams
# (`roam status --json`) minus the UDP receive-buffer drops in the receiver's
# namespace (/proc/net/snmp RcvbufErrors), with the lost fraction in
# drop1pct/droprevpct. roam is packet mode,
# roam-flow is `roam client --mode flow` (gVisor), roam-flow-sys is `roam client --mode flow
# --stack system` (the kernel's TCP, in redirect mode where nftables allows; not in the default
# ONLY), roam-flow-sysrw the same with --stack system-rewrite (the TUN-rewrite fallback; not in
# the default ONLY either). For those two, the mode the client's system stack runs in is printed. Needs root and the shared bench kit
# (topo.sh, run-anchor.sh, nbsvc.go) from ../shared/bench, or BENCH_DIR.
#
#   cmd/bench/bench.sh                 # 3 rounds x 8 s
#   ROUNDS=5 DUR=10 cmd/bench/bench.sh
#   ONLY="roam roam-flow" cmd/bench/bench.sh   # skip wireguard-go
#   MODE=full cmd/bench/bench.sh       # roam full tunnel instead of --route 10.201.0.0/24
#   RELAY=delay=25ms,loss=1 cmd/bench/bench.sh  # through ../shared/bench's lossy UDP relay
#                                      # (one-way delay and loss per direction), all systems
#   FEC=auto cmd/bench/bench.sh        # roam client --fec auto (or off, or K:M like 16:4)
#   KEEP=/tmp/collapse cmd/bench/bench.sh  # keep each roam round's logs, iperf3 JSON and
#                                      # `roam status --json` of both ends after each iperf3 run
#                                      # in KEEP/<round>-<tunnel>/ (the run dir is overwritten per round);
#                                      # KEEP_QLOG=1 adds both ends' congestion-control qlog (ROAM_QLOG_CC)
#
# Results: /tmp/netbench/results/roam-bench.txt (and per-run logs).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BENCH_DIR=${BENCH_DIR:-$(cd "$REPO/../shared/bench" 2>/dev/null && pwd || true)}
[[ -x $BENCH_DIR/topo.sh ]] || { echo "bench.sh: set BENCH_DIR to the folder with topo.sh (../shared/bench)" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "bench.sh: run as root" >&2; exit 2; }
ROUNDS=${ROUNDS:-3} DUR=${DUR:-8} ONLY=${ONLY:-roam roam-flow wg} MODE=${MODE:-route} RELAY=${RELAY:-} FEC=${FEC:-} KEEP=${KEEP:-}
RELAY_PORT=61820
export NB_BIN=${NB_BIN:-/tmp/netbench/bin} NB_RUN=${NB_RUN:-/tmp/netbench/run}
TOPO="$BENCH_DIR/topo.sh" BIN=$NB_BIN RUN=$NB_RUN
W=/tmp/netbench/roam-bench RES=/tmp/netbench/results
mkdir -p "$BIN" "$RUN" "$W" "$RES"
INET=10.201.0.2 SRV=192.0.2.1
for t in iperf3 jq nft ping; do command -v $t >/dev/null || { echo "missing $t (apt-get install --no-install-recommends iperf3 jq nftables iputils-ping)" >&2; exit 1; }; done

echo "[bench] building roam" >&2
(cd "$REPO" && go build -o "$BIN/roam" ./cmd/roam)
[[ -x $BIN/nbsvc && $BENCH_DIR/nbsvc.go -ot $BIN/nbsvc ]] || (cd "$BENCH_DIR" && GOFLAGS= go build -o "$BIN/nbsvc" nbsvc.go)
[[ -z $RELAY || ( -x $BIN/lossy-udp-relay && $BENCH_DIR/lossy-udp-relay.go -ot $BIN/lossy-udp-relay ) ]] || (cd "$BENCH_DIR" && GOFLAGS= go build -o "$BIN/lossy-udp-relay" lossy-udp-relay.go)

xc() { ip netns exec nb-client "$@"; }
median() { awk '/^[0-9.]+$/{print}' | sort -g | awk '{a[NR]=$1} END{ if (NR==0) print "NA"; else if (NR%2) print a[(NR+1)/2]; else printf "%.4g\n", (a[NR/2]+a[NR/2+1])/2 }'; }
ticks() { local t=0 p; for p in "$@"; do [[ -r /proc/$p/stat ]] && t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
CLK=$(getconf CLK_TCK)

cleanup() { "$TOPO" down >/dev/null 2>&1 || true; }
trap cleanup EXIT

# keepdir: this round's KEEP folder (empty without KEEP); r and who are the round loop's.
keepdir() { [[ -n $KEEP ]] && echo "$KEEP/${r:-0}-${who:-roam}"; }

iperf() { # args... -> Mbit/s
  local j="$W/iperf.json" kd; kd=$(keepdir)
  xc iperf3 -c $INET -t "$DUR" -O 1 "$@" -J >"$j" 2>/dev/null || { [[ -n $kd ]] && cp "$j" "$kd/iperf${1:-}.json"; echo NA; return; }
  if [[ -n $kd ]]; then
    cp "$j" "$kd/iperf${1:-}.json"
    "$BIN/roam" status --socket "$W/state/client.sock" --json >"$kd/status-client${1:-}.json" 2>&1 || true
    "$BIN/roam" status --socket "$W/state/server.sock" --json >"$kd/status-server${1:-}.json" 2>&1 || true
  fi
  jq -r '(.end.sum_received.bits_per_second // 0) / 1e6 | floor' "$j"
}

# counters: the datagram counters of the running roam pair and the UDP
# receive-buffer drops of both namespaces: "ctx crx stx srx cdrop sdrop".
counters() {
  local c s
  c=$("$BIN/roam" status --socket "$W/state/client.sock" --json 2>/dev/null || echo '{}')
  s=$("$BIN/roam" status --socket "$W/state/server.sock" --json 2>/dev/null || echo '{}')
  printf '%s %s %s %s %s %s\n' \
    "$(jq -r '.client.tx_packets // 0' <<<"$c")" "$(jq -r '.client.rx_datagrams // 0' <<<"$c")" \
    "$(jq -r '[.server.sessions[]? | select(.kind=="connect-ip") | .tx_packets] | add // 0' <<<"$s")" \
    "$(jq -r '[.server.sessions[]? | select(.kind=="connect-ip") | .rx_datagrams] | add // 0' <<<"$s")" \
    "$(udp_rcvbuf_errors nb-client)" "$(udp_rcvbuf_errors nb-server)"
}
udp_rcvbuf_errors() { # netns -> Udp RcvbufErrors
  ip netns exec "$1" awk '$1=="Udp:" && !h {for (i=2;i<=NF;i++) if ($i=="RcvbufErrors") f=i; h=1; next} $1=="Udp:" && h {print $f}' /proc/net/snmp
}

# measured_iperf PIDS... -- IPERF_ARGS...: one iperf3 run; prints "Mbit/s
# cpu% drops_per_10s drop%", the drops being those of the run's data
# direction (-R: server->client) inside the receiving roam, kernel socket
# buffer drops subtracted.
measured_iperf() {
  local pids=() a
  while [[ $1 != -- ]]; do pids+=("$1"); shift; done
  shift
  local b0 t0 b1 t1 k0 k1 mbit
  k0=($(counters)); b0=$(ticks "${pids[@]}"); t0=$(date +%s.%N)
  mbit=$(iperf "$@")
  b1=$(ticks "${pids[@]}"); t1=$(date +%s.%N)
  sleep 0.3 # let the last datagrams land
  k1=($(counters))
  local sent rcvd kern
  if [[ ${1:-} == -R ]]; then
    sent=$((k1[2] - k0[2])) rcvd=$((k1[1] - k0[1])) kern=$((k1[4] - k0[4]))
  else
    sent=$((k1[0] - k0[0])) rcvd=$((k1[3] - k0[3])) kern=$((k1[5] - k0[5]))
  fi
  awk -v d=$((b1 - b0)) -v c="$CLK" -v a="$t0" -v b="$t1" -v m="$mbit" -v s="$sent" -v r="$rcvd" -v k="$kern" 'BEGIN{
    t = b - a; lost = s - r - k; if (lost < 0) lost = 0
    printf "%s %.0f %.0f %.2f\n", m, d*100/c/t, lost*10/t, (s > 0 ? lost*100/s : 0) }'
}

roam_round() { # packet|flow [gvisor|system|system-rewrite]
  local cmode=$1 cstack=${2:-gvisor} kd; kd=$(keepdir)
  [[ -n $kd ]] && { rm -rf "$kd"; mkdir -p "$kd"; }
  # KEEP_QLOG=1: both ends write a reduced qlog (tunnel.QlogCCEnv) into the KEEP folder.
  [[ -n $kd && -n ${KEEP_QLOG:-} ]] && export ROAM_QLOG_CC="$kd/qlog"
  "$TOPO" down >/dev/null 2>&1 || true
  "$TOPO" up >/dev/null 2>&1
  rm -rf "$W/state"; mkdir -p "$W/state"
  rm -f "$RUN/roam-server.log" "$RUN/roam-client.log"
  local tok; tok=$("$BIN/roam" token)
  printf '%s\n' "$tok" >"$W/state/tokens"
  ip netns exec nb-server "$BIN/roam" server --listen $SRV:4433 --state-dir "$W/state" --tokens "$W/state/tokens" --status-socket "$W/state/server.sock" >"$RUN/roam-server.log" 2>&1 &
  echo $! >"$RUN/roam-server.pid"
  for _ in $(seq 100); do [[ -s $W/state/pin ]] && grep -qs "roam client" "$RUN/roam-server.log" && break; sleep 0.1; done
  local route=(--route 10.201.0.0/24)
  [[ $MODE == full ]] && route=()
  local fec=()
  [[ -n $FEC ]] && fec=(--fec "$FEC")
  local dport=4433 relay_pid=
  if [[ -n $RELAY ]]; then
    local args=() kv
    for kv in ${RELAY//,/ }; do args+=("-${kv%%=*}" "${kv#*=}"); done
    ip netns exec nb-server "$BIN/lossy-udp-relay" -listen $SRV:$RELAY_PORT -upstream $SRV:4433 "${args[@]}" >"$RUN/roam-relay.log" 2>&1 &
    relay_pid=$!
    dport=$RELAY_PORT
  fi
  ip netns exec nb-client "$BIN/roam" client --server $SRV:$dport --token "$tok" --pin "$(cat "$W/state/pin")" --mode "$cmode" --stack "$cstack" --status-socket "$W/state/client.sock" "${route[@]}" "${fec[@]}" >"$RUN/roam-client.log" 2>&1 &
  echo $! >"$RUN/roam-client.pid"
  for _ in $(seq 150); do grep -qs "tunnel up" "$RUN/roam-client.log" && break; sleep 0.1; done
  grep -qs "tunnel up" "$RUN/roam-client.log" || { echo "[bench] roam did not come up" >&2; cat "$RUN"/roam-*.log >&2; exit 1; }
  if [[ $cstack == system* ]]; then
    echo "[bench] --stack $cstack: $(grep -o 'msg="system stack started".* mode=[a-z]*' "$RUN/roam-client.log" | grep -o 'mode=[a-z]*' || echo 'no system stack (gvisor fallback)')" >&2
  fi
  local pids=($(cat "$RUN/roam-server.pid") $(cat "$RUN/roam-client.pid") $relay_pid)
  local tcp1 cpu drop1 drop1pct rev cpurev droprev droprevpct
  read -r tcp1 cpu drop1 drop1pct < <(measured_iperf "${pids[@]}" --)
  read -r rev cpurev droprev droprevpct < <(measured_iperf "${pids[@]}" -- -R)
  [[ $cmode == packet ]] || { drop1=; drop1pct=; droprev=; droprevpct=; }
  local rtt; rtt=$(xc "$BIN/nbsvc" tcpping -to $INET:7007 -n 100 -i 10ms 2>/dev/null | sed -n 's/.*med=\([0-9.NA]*\).*/\1/p')
  local icmp; icmp=$(xc ping -c 50 -i 0.01 -W 1 $INET 2>&1 | grep -o 'time=[0-9.]*' | cut -d= -f2 | median)
  echo "roam tcp1=$tcp1 rev=$rev rtt=$rtt icmp=$icmp cpu=$cpu cpurev=$cpurev${drop1:+ drop1=$drop1 drop1pct=$drop1pct droprev=$droprev droprevpct=$droprevpct}"
  kill -TERM "$(cat "$RUN/roam-client.pid")" "$(cat "$RUN/roam-server.pid")" $relay_pid 2>/dev/null || true
  sleep 0.5
  if [[ -n $kd ]]; then
    sleep 0.5 # the final counters lines
    cp "$RUN"/roam-{client,server,relay}.log "$kd/" 2>/dev/null || true
    echo "roam tcp1=$tcp1 rev=$rev" >"$kd/result"
  fi
  "$TOPO" down >/dev/null 2>&1 || true
}

wg_round() {
  local line
  line=$(NAME=wg REPS=1 DUR=$DUR TESTS="tcp1 rev" RELAY=$RELAY "$BENCH_DIR/run-anchor.sh" wg 2>>"$W/wg.log" | tail -1)
  local tcp1 rev rtt icmp cpu
  tcp1=$(sed -n 's/.*tcp1=\([0-9.NA]*\).*/\1/p' <<<"$line")
  rev=$(sed -n 's/.* rev=\([0-9.NA]*\).*/\1/p' <<<"$line")
  rtt=$(sed -n 's/.* rtt=\([0-9.NA]*\).*/\1/p' <<<"$line")
  icmp=$(sed -n 's/.* icmp=\([0-9.NA]*\).*/\1/p' <<<"$line")
  cpu=$(sed -n 's/.* cpu_tun=\([0-9.NA]*\)%.*/\1/p' <<<"$line")
  echo "wg tcp1=$tcp1 rev=$rev rtt=$rtt icmp=$icmp cpu=$cpu"
}

declare -A V
for r in $(seq 1 "$ROUNDS"); do
  for who in $ONLY; do
    case $who in
      roam) line=$(roam_round packet) ;;
      roam-flow) line=$(roam_round flow) ;;
      roam-flow-sys) line=$(roam_round flow system) ;;
      roam-flow-sysrw) line=$(roam_round flow system-rewrite) ;;
      wg) line=$(wg_round) ;;
      *) echo "bench.sh: unknown system $who in ONLY (roam, roam-flow, roam-flow-sys, roam-flow-sysrw, wg)" >&2; exit 2 ;;
    esac
    line="$who ${line#* }"
    echo "[bench] round $r: $line" >&2
    for kv in ${line#* }; do V[$who.${kv%%=*}]+="${kv#*=} "; done
  done
done
out=""
for who in $ONLY; do
  l="$who:"
  for k in tcp1 rev rtt icmp cpu cpurev drop1 drop1pct droprev droprevpct; do
    [[ -n ${V[$who.$k]:-} ]] || continue
    m=$(tr ' ' '\n' <<<"${V[$who.$k]:-}" | median)
    case $k in
      tcp1|rev) l+=" $k=$m Mbit/s" ;;
      rtt|icmp) l+=" $k=$m ms" ;;
      cpu) l+=" cpu_tun=$m%" ;;
      cpurev) l+=" cpu_tun_rev=$m%" ;;
      drop1|droprev) l+=" $k=$m/10s" ;;
      drop1pct|droprevpct) l+=" $k=$m%" ;;
    esac
  done
  out+="$l"$'\n'
done
printf '%s' "$out" | tee -a "$RES/roam-bench.txt"
echo "(medians of $ROUNDS interleaved rounds, ${DUR}s iperf3 runs, mode=$MODE, relay='${RELAY}', fec='${FEC}', $(date -u +%FT%TZ))" | tee -a "$RES/roam-bench.txt"
