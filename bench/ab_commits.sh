#!/usr/bin/env bash
# Same machine, same minute: nobusy at an older commit against the working tree, one client
# at a time (c=1, non-streaming) through the fake upstream, alternating runs. Prints requests/s
# and the server's CPU per 1,000 requests for each. The overhead suite's absolute figures move
# with the machine; this says whether a change cost speed.
#   bash bench/ab_commits.sh 8e58ca6 [requests] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/ab_commits.sh REV [requests] [rounds]}
n=${2:-3000}
rounds=${3:-2}
V=$PWD/.venv/bin
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
git archive "$rev" src | tar -x -C "$work"
free_port() { $V/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port)
$V/python -m nobusy fake-upstream --port "$up" > "$work/fake.log" 2>&1 &
printf 'upstreams:\n  fake: {kind: openai, base_url: "http://127.0.0.1:%s/v1", default_model: ok}\nmodels:\n  fake-model: [fake/ok]\n' "$up" > "$work/nb.yaml"
cat > "$work/drive.py" <<'PY'
import sys, time, httpx
url, n = sys.argv[1], int(sys.argv[2])
body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
with httpx.Client() as client:
    start = time.perf_counter()
    for _ in range(n):
        client.post(url + "/v1/chat/completions", json=body).raise_for_status()
    print(f"{n / (time.perf_counter() - start):.0f}")
PY
run() {
  local label=$1 src=$2 port
  port=$(free_port)
  PYTHONPATH=$src $V/python -m nobusy serve --port "$port" --config "$work/nb.yaml" \
    --log-level warning --data-dir "$work/data-$label-$RANDOM" > "$work/$label.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  $V/python "$work/drive.py" "http://127.0.0.1:$port" 300 >/dev/null  # warm-up
  local t0 t1 rps
  t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  rps=$($V/python "$work/drive.py" "http://127.0.0.1:$port" "$n")
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  printf '%-8s %6s req/s   server CPU %5.2f s per 1,000 requests\n' "$label" "$rps" \
    "$($V/python -c "print(($t1 - $t0) / $(getconf CLK_TCK) * 1000 / $n)")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for _ in $(seq "$rounds"); do run "$rev" "$work/src"; run working "$PWD/src"; done
