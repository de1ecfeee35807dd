#!/usr/bin/env bash
# Idle cost of many channel or pattern rules: Redis clients (INFO clients), the router's RSS
# and idle CPU, and the time from start until every rule runs (/readyz answers 200).
#
#   bench/pubsub_rules.sh [ROUTER_BINARY] [COUNTS...]     e.g. bench/pubsub_rules.sh target/release/redis-router 100 1000 10000
#
# Starts a redis-server of its own on a free port (maxclients 20000, so that a router opening
# one client per rule can still be measured), runs the router on N channel rules, then on N
# pattern rules, and prints one line per run. Stops what it started.
set -euo pipefail
BIN=${1:-target/release/redis-router}
shift || true
COUNTS=${*:-100 1000 10000}
WORK=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
HTTP=$(free_port)
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --maxclients 20000 \
  --dir "$WORK" --logfile "$WORK/redis.log" --daemonize no &
REDIS=$!
ROUTER=
cleanup() { [ -n "$ROUTER" ] && kill "$ROUTER" 2>/dev/null; kill "$REDIS" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
cli() { redis-cli -p "$PORT" "$@"; }
until cli PING >/dev/null 2>&1; do sleep 0.05; done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

printf '%-8s %6s %8s %10s %8s %12s\n' kind rules clients rss_mib cpu_pct startup_s
for kind in channel pattern; do
  for n in $COUNTS; do
    cli FLUSHALL >/dev/null
    {
      echo "connections:"
      echo "  default: { url: \"redis://127.0.0.1:$PORT\" }"
      echo "rules:"
      for i in $(seq 0 $((n - 1))); do
        if [ "$kind" = channel ]; then src="channel: \"c:$i\""; else src="pattern: \"p:$i:*\""; fi
        printf '  - name: r%d\n    source: { %s }\n    sinks: [ { stream: out } ]\n' "$i" "$src"
      done
    } >"$WORK/rules.yaml"
    start=$(date +%s.%N)
    RUST_LOG=warn "$BIN" run -c "$WORK/rules.yaml" --listen "127.0.0.1:$HTTP" 2>"$WORK/router.log" &
    ROUTER=$!
    while :; do
      code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP/readyz" || true)
      [ "$code" = 200 ] && break
      if ! kill -0 "$ROUTER" 2>/dev/null; then echo "router exited; log:"; tail -5 "$WORK/router.log"; exit 1; fi
      sleep 0.05
    done
    up=$(echo "$(date +%s.%N) - $start" | bc)
    if [ "$kind" = channel ]; then got=$(cli PUBSUB CHANNELS 'c:*' | wc -l); else got=$(cli PUBSUB NUMPAT); fi
    [ "$got" -eq "$n" ] || { echo "$got of $n subscribed"; exit 1; }
    sleep 3
    t0=$(ticks "$ROUTER")
    sleep 10
    t1=$(ticks "$ROUTER")
    cpu=$(echo "scale=2; ($t1 - $t0) * 100 / $HZ / 10" | bc)
    rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$ROUTER/status")
    clients=$(cli INFO clients | awk -F: '/^connected_clients/ {print $2 - 1}' | tr -d '\r')
    printf '%-8s %6s %8s %10s %8s %12.2f\n' "$kind" "$n" "$clients" "$rss" "$cpu" "$up"
    kill "$ROUTER"
    wait "$ROUTER" 2>/dev/null || true
    ROUTER=
  done
done
