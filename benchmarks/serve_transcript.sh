#!/usr/bin/env bash
# A transcript of the service on a factory network: the real `trustad serve` with a token
# file, answered by curl: 401 without the token, 200 with it, /docs with no external URL
# (and its assets served locally), /metrics, and the access log. Real DINOv2 ViT-S/14
# weights, synthetic parts, 224 px.
#
#   bash benchmarks/serve_transcript.sh > benchmarks/results/serve_transcript.txt
set -euo pipefail
cd "$(dirname "$0")/.."
TRUSTAD=${TRUSTAD:-.venv/bin/trustad}
PORT=${PORT:-8765}
tmp=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server"; rm -rf "$tmp"' EXIT

.venv/bin/python -c "from trustad.data import make_synthetic_dataset as m; m('$tmp/data', ['brick'], n_train=4, n_test_good=4, n_test_defect=4)"
parts=$tmp/data/brick
$TRUSTAD fit --normal "$parts/train/good" --calibration "$parts/test" --resolution 224 \
    --out "$tmp/brick.safetensors" > /dev/null
ls -l "$tmp/brick.safetensors" | awk '{print "model file mode: " $1}'
head -c 24 /dev/urandom | base64 > "$tmp/token"
chmod 600 "$tmp/token"
$TRUSTAD serve "$tmp/brick.safetensors" --port "$PORT" --token-file "$tmp/token" \
    2> "$tmp/server.log" &
server=$!
until curl -s "http://127.0.0.1:$PORT/health" > /dev/null; do sleep 0.5; done
image=$(ls "$parts"/test/*/*.png | head -1)

show() { echo; echo "\$ $*"; "$@"; echo; }
show curl -s -w '\nHTTP %{http_code}\n' "http://127.0.0.1:$PORT/health"
show curl -s -w '\nHTTP %{http_code}\n' -F "file=@$image" "http://127.0.0.1:$PORT/predict"
show curl -s -w '\nHTTP %{http_code}\n' -H "Authorization: Bearer wrong" \
    "http://127.0.0.1:$PORT/model"
echo; echo "\$ curl -s -H 'Authorization: Bearer <token>' -F file=@$(basename "$image") .../predict"
curl -s -w '\nHTTP %{http_code}\n' -H "Authorization: Bearer $(cat "$tmp/token")" \
    -F "file=@$image" "http://127.0.0.1:$PORT/predict"

echo; echo "\$ curl -s .../docs   # the page, then every URL in it"
curl -s "http://127.0.0.1:$PORT/docs" > "$tmp/docs.html"
echo "HTTP $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/docs"), $(wc -c < "$tmp/docs.html") bytes"
echo "external URLs in the page: $(grep -Eoc 'https?://' "$tmp/docs.html" || true)"
for asset in $(grep -Eo '(src|href)="[^"]+"' "$tmp/docs.html" | cut -d'"' -f2); do
    echo "  $asset: HTTP $(curl -s -o /dev/null -w '%{http_code}, %{size_download} bytes' "http://127.0.0.1:$PORT$asset")"
done

echo; echo "\$ curl -s -H 'Authorization: Bearer <token>' .../metrics   # less comments, _created and other routes' buckets"
curl -s -H "Authorization: Bearer $(cat "$tmp/token")" "http://127.0.0.1:$PORT/metrics" \
    | grep -Ev '^#|_created|_bucket\{le="[^"]*",path="(/health|/docs|/model|other)"'

echo; echo "server's standard error (the access log):"
cat "$tmp/server.log"
