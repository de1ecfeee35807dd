#!/usr/bin/env bash
# What a tap costs a rule: stream -> stream over a preloaded backlog, timed with nobody tapping,
# then with `redis-router tap` reading every event, then again untapped; prints msgs/s and the
# ratio. Runs its own redis-server on a free port.
#   bench/tap.sh [ROUTER_BINARY] [MESSAGES]      e.g. bench/tap.sh target/release/redis-router 200000
# BASELINE=<binary of an older build> also times that build untapped (its file without `tap:`),
# to show that a router nobody taps runs as fast as one without tapping at all.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/redis-router}
N=${2:-200000}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
hport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --save '' --appendonly no --dir "$dir" >/dev/null &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; rm -rf "$dir"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
cat > "$dir/routes.yaml" <<YAML
connections:
  default: { url: "redis://127.0.0.1:$port" }
http: { listen: "127.0.0.1:$hport", tap: true }
rules:
  - name: copy
    source: { stream: in, group: g, start: oldest }
    sinks: [ { stream: out } ]
YAML
sed 's/, tap: true//' "$dir/routes.yaml" > "$dir/plain.yaml"
preload() {
  redis-cli -p "$port" DEL in out >/dev/null
  python3 - "$N" <<'PY' | redis-cli -p "$port" --pipe >/dev/null
import sys
n = int(sys.argv[1])
out = sys.stdout
payload = '{"event":"order.created","data":{"order_id":%d,"total":150000}}'
for i in range(n):
    p = payload % i
    out.write("*5\r\n$4\r\nXADD\r\n$2\r\nin\r\n$1\r\n*\r\n$7\r\npayload\r\n$%d\r\n%s\r\n" % (len(p), p))
PY
}
run() { # $1: "tap", "none" or "baseline"
  preload
  if [ "$1" = baseline ]; then
    "$BASELINE" run -c "$dir/plain.yaml" 2>"$dir/router.log" &
  else
    "$BIN" run -c "$dir/routes.yaml" 2>"$dir/router.log" &
  fi
  local router=$!
  until curl -s "http://127.0.0.1:$hport/healthz" >/dev/null 2>&1; do sleep 0.02; done
  local tap=
  if [ "$1" = tap ]; then
    "$BIN" tap -c "$dir/routes.yaml" --json >/dev/null 2>&1 &
    tap=$!
  fi
  local start end
  start=$(date +%s.%N)
  until [ "$(redis-cli -p "$port" XLEN out)" -ge "$N" ]; do sleep 0.01; done
  end=$(date +%s.%N)
  [ -n "$tap" ] && kill "$tap" 2>/dev/null
  kill "$router"; wait "$router" 2>/dev/null || true
  python3 -c "print(int($N / ($end - $start)))"
}
if [ -n "${BASELINE:-}" ]; then
  # Alternated, ROUNDS times each (default 3): the machine's drift hits both alike.
  zs=(); as=()
  for _ in $(seq "${ROUNDS:-3}"); do zs+=("$(run baseline)"); as+=("$(run none)"); done
  echo "baseline (no tapping in the build): ${zs[*]} msgs/s; this build, untapped: ${as[*]} msgs/s"
  python3 - "${zs[*]}" "${as[*]}" <<'PY'
import statistics, sys
z, a = ([int(x) for x in arg.split()] for arg in sys.argv[1:3])
print('untapped / baseline (medians): %.2f' % (statistics.median(a) / statistics.median(z)))
PY
fi
a=$(run none); b=$(run tap); c=$(run none)
echo "untapped: $a msgs/s, tapped: $b msgs/s, untapped again: $c msgs/s"
python3 -c "print('tapped / untapped (mean of both): %.2f' % ($b / (($a + $c) / 2)))"
