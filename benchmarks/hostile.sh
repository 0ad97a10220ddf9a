#!/usr/bin/env bash
# Hostile inputs through the command line and the service, each under /usr/bin/time -v:
# exit status (or HTTP status), last message line, wall time, peak RSS; one Markdown table
# row each. Usage: [PARTS="cli largest refusals serve timelimit"] benchmarks/hostile.sh
# PYTHON SRC WORKDIR before|after, SRC the trustad source folder put on PYTHONPATH
# (WORKDIR as benchmarks/hostile_inputs.py's docstring prepares it). A run is stopped after LIMIT seconds (default 30) or when
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
PARTS=" ${PARTS:-cli largest refusals serve timelimit} "  # which parts to run
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

if [[ $PARTS == *" refusals "* ]]; then
  mkdir -p taken_dir
  measure "fit --out onto a folder" bash -c "trustad fit --normal normal --out taken_dir"
  measure "fit mixed --normal" bash -c "trustad fit --normal normal_mixed --out mixed.safetensors"
  rm -rf "evout_${LABEL}_typo"
  ev="trustad evaluate --dataset folder --categories cat --shots 1 --seeds 1 --attack none"
  ev="$ev --flags none --quiet --out evout_${LABEL}_typo"
  measure "evaluate --root typo" bash -c "$ev --root evroot_typo"
  measure "evaluate --root corrected" bash -c "$ev --root evroot"
  for edited in platt_b no_bank version0; do
    measure "predict edited_$edited" bash -c "trustad predict edited_$edited.safetensors test/ok.png --quiet"
  done
  if [ "$LABEL" = after ]; then
    measure "predict edited_signed --verify-key" bash -c \
      "trustad predict edited_signed.safetensors test/ok.png --verify-key key --quiet"
  fi
fi

# The service on a resolution-224 model (the issue's): each file posted with a 30 s client
# limit, then SIGTERM: how long the server takes to stop. serve NAME FILES -- SERVE_OPTIONS
serve() {
  local name=$1; shift
  local files=()
  while [ "$1" != -- ]; do files+=("$1"); shift; done
  shift
  local port=${PORT:-18765}
  /usr/bin/time -v -o "time_${LABEL}_$name.txt" bash -c \
    "exec env PYTHONPATH='$SRC' '$PY' -c 'import sys; from trustad.cli import main; sys.exit(main())' serve model224.safetensors --port $port $*" \
    >"out_${LABEL}_$name.txt" 2>&1 &
  local server=$!
  for _ in $(seq 400); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.3; done
  for f in "${files[@]}"; do
    rm -f "resp_${LABEL}.json"
    answer=$(curl -s -m 30 -o "resp_${LABEL}.json" -w '%{http_code} %{time_total}' -F "file=@$f" \
      "http://127.0.0.1:$port/predict")
    echo "| $LABEL | $name $f | HTTP ${answer% *} | ${answer#* } s | | $(head -c 150 "resp_${LABEL}.json" 2>/dev/null) |"
  done
  local python
  python=$(pgrep -P "$server")  # the server itself, under /usr/bin/time
  local start
  start=$(date +%s.%N)
  kill -TERM "$python"
  for _ in $(seq 50); do kill -0 "$python" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$python" 2>/dev/null; then
    echo "| $LABEL | $name SIGTERM | still running 10 s after SIGTERM: killed | | | |"
    kill -KILL "$python"
  fi
  wait "$server"
  local rc=$?
  local stop rss
  stop=$(echo "$(date +%s.%N) - $start" | bc)
  rss=$(awk -F': ' '/Maximum resident/ {printf "%.0f MB", $2/1024}' "time_${LABEL}_$name.txt")
  echo "| $LABEL | $name SIGTERM | exit $rc | stopped ${stop} s after SIGTERM | $rss (server peak) | |"
}

if [[ $PARTS == *" serve "* ]]; then
  limit=()
  [ "$LABEL" = after ] && limit=(--request-seconds 20)
  serve serve strip_3000x1.png strip_19000x1.png strip_20000x26.png strip_20000x100.png \
    test/ok.png -- "${limit[@]}"
fi
if [[ $LABEL == after && $PARTS == *" timelimit "* ]]; then
  # real work over a 1 s limit (the most elongated image allowed, random pixels): 504, then
  # the next request is served
  serve timelimit rand_4480x448.png test/ok.png -- --request-seconds 1
fi
