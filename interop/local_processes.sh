#!/usr/bin/env bash
# Start a bootstrap node and N nodes as separate processes on loopback, wait, show each node's
# status, then stop them all (SIGTERM). Usage: interop/local_processes.sh [N] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-4}
WAIT=${2:-5}
PY=${PY:-.venv/bin/python}
export PROZCHAIN_DIAL_LOOPBACK_ONLY=1
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$PY" -m prozchain_discovery node --listen /ip4/127.0.0.1/tcp/0 --bootstrap-node --min-peers 1 \
  --network-id prozchain-interop --data-dir "$work/boot" --status-interval 1 \
  >"$work/boot.out" 2>"$work/boot.log" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/boot.out" ] && break; sleep 0.1; done
boot=$(head -n1 "$work/boot.out")
echo "bootstrap node: $boot"
for i in $(seq "$N"); do
  "$PY" -m prozchain_discovery node --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$boot" \
    --min-peers "$(( N < 3 ? N : 3 ))" --network-id prozchain-interop --data-dir "$work/n$i" \
    --status-interval 1 >"$work/n$i.out" 2>"$work/n$i.log" &
  pids+=($!)
done
sleep "$WAIT"
for i in $(seq "$N"); do
  echo "--- node $i"
  "$PY" -m prozchain_discovery status --data-dir "$work/n$i" | sed -n 1,4p
done
