#!/usr/bin/env bash
# Hostile inputs through the command line, each under /usr/bin/time -v: exit status, last
# message line, wall time, peak RSS. Usage: benchmarks/hostile.sh PYTHON SRC WORKDIR LABEL
# (WORKDIR holds model.safetensors, strip_*.png, test/ok.png and evroot/ as written by
# benchmarks/hostile_inputs.py). A run is stopped after LIMIT seconds (default 30) or when
# it asks for more than CAP_GB of address space (default 4; uncapped, the 3000x1 strip
# once took 23.5 GB before the kernel killed it, on a shared machine).
set -u
ulimit -v $(( ${CAP_GB:-4} * 1024 * 1024 ))
PY=$1 SRC=$2 WORK=$3 LABEL=$4 LIMIT=${LIMIT:-30}
cd "$WORK"
export PY SRC
trustad() { PYTHONPATH="$SRC" "$PY" -c 'import sys; from trustad.cli import main; sys.exit(main())' "$@"; }
measure() {  # name, command...
  local name=$1; shift
  /usr/bin/time -v -o "time_${LABEL}_$name.txt" timeout "$LIMIT" "$@" >"out_${LABEL}_$name.txt" 2>&1
  local rc=$?
  local rss wall
  rss=$(awk -F': ' '/Maximum resident/ {printf "%.0f MB", $2/1024}' "time_${LABEL}_$name.txt")
  wall=$(awk -F': ' '/Elapsed \(wall/ {print $2}' "time_${LABEL}_$name.txt")
  local msg
  msg=$(grep -v '^\s*$' "out_${LABEL}_$name.txt" | tail -1 | cut -c1-160)
  [ "$rc" = 124 ] && msg="(stopped after ${LIMIT} s) $msg"
  echo "| $LABEL | $name | $rc | $wall | $rss | $msg |"
}
export -f trustad
PARTS=" ${PARTS:-cli largest serve} "  # which parts to run
if [[ $PARTS == *" cli "* ]]; then
for strip in 3000x1 19000x1 20000x26 20000x100; do
  measure "predict $strip" bash -c "trustad predict model.safetensors strip_$strip.png --quiet"
done
for strip in 3000x1 20000x26; do
  rm -rf "ev_$strip" && cp -r evroot "ev_$strip" && cp "strip_$strip.png" "ev_$strip/cat/test/good/"
  rm -rf "evout_${LABEL}_$strip"
  measure "evaluate $strip" bash -c "trustad evaluate --dataset folder --root ev_$strip --categories cat --shots 1 --seeds 1 --attack none --flags none --out evout_${LABEL}_$strip --quiet"
done
fi
if [[ $LABEL == after && $PARTS == *" largest "* ]]; then
  # the largest images the default limits let through at 448
  for big in 10000x10000 4480x448; do
    measure "predict largest $big" bash -c "trustad predict model.safetensors largest_$big.png --quiet"
  done
fi

[[ $PARTS == *" serve "* ]] || exit 0
# The service on a resolution-224 model (the issue's), each request with a 30 s client
# limit, then a plain image, then SIGTERM: how long the server takes to stop.
PORT=${PORT:-8765}
limit=()
[ "$LABEL" = after ] && limit=(--request-seconds 20)
/usr/bin/time -v -o "time_${LABEL}_serve.txt" bash -c \
  "exec env PYTHONPATH='$SRC' '$PY' -c 'import sys; from trustad.cli import main; sys.exit(main())' serve model224.safetensors --port $PORT ${limit[*]}" \
  >"out_${LABEL}_serve.txt" 2>&1 &
server=$!
for _ in $(seq 400); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.3; done
for f in strip_3000x1 strip_19000x1 strip_20000x26 strip_20000x100 test/ok; do
  rm -f "resp_${LABEL}.json"
  answer=$(curl -s -m 30 -o "resp_${LABEL}.json" -w '%{http_code} %{time_total}' -F "file=@$f.png" \
    "http://127.0.0.1:$PORT/predict")
  echo "| $LABEL | serve $f | HTTP ${answer% *} | ${answer#* } s | | $(head -c 150 "resp_${LABEL}.json") |"
done
python=$(pgrep -P "$server")  # the server itself, under /usr/bin/time
start=$(date +%s.%N)
kill -TERM "$python"
for _ in $(seq 50); do kill -0 "$python" 2>/dev/null || break; sleep 0.2; done
if kill -0 "$python" 2>/dev/null; then
  echo "| $LABEL | serve SIGTERM | still running 10 s after SIGTERM: killed | | | |"
  kill -KILL "$python"
fi
wait "$server"
rc=$?
stop=$(echo "$(date +%s.%N) - $start" | bc)
rss=$(awk -F': ' '/Maximum resident/ {printf "%.0f MB", $2/1024}' "time_${LABEL}_serve.txt")
echo "| $LABEL | serve SIGTERM | exit $rc | stopped ${stop} s after SIGTERM | $rss (server peak) | |"
