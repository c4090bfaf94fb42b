#!/usr/bin/env bash
# A whole session with curl: create, step (JSON and binary), read, tune, delete.
#   ADAMHUB=http://localhost:8000 bash curl_session.sh
set -euo pipefail
ADAMHUB=${ADAMHUB:-http://localhost:8000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Create a session of 4 parameters, all zero, with AdamW.
curl -sf -X POST "$ADAMHUB/v1/sessions" -H 'Content-Type: application/json' \
  -d '{"size": 4, "optimizer": {"lr": 0.05, "weight_decay": 0.01, "decoupled_weight_decay": true}}' \
  > "$work/session.json"
SID=$(sed -E 's/.*"id":"([^"]+)".*/\1/' "$work/session.json")
echo "session $SID"

# Ten JSON steps; the key makes each safe to retry.
for i in $(seq 1 10); do
  curl -sf -X POST "$ADAMHUB/v1/sessions/$SID/step?return=none" \
    -H 'Content-Type: application/json' -H "Idempotency-Key: curl-$i" \
    -d '{"gradient": [1.0, -1.0, 0.5, -0.5]}' > /dev/null
done

# One binary step: four little-endian float32, sent and received raw.
printf '\x00\x00\x80\x3f\x00\x00\x80\xbf\x00\x00\x00\x3f\x00\x00\x00\xbf' > "$work/grad.bin"
curl -sf -X POST "$ADAMHUB/v1/sessions/$SID/step" \
  -H 'Content-Type: application/octet-stream' -H 'Accept: application/octet-stream' \
  --data-binary @"$work/grad.bin" -o "$work/params.bin"
echo "binary answer: $(wc -c < "$work/params.bin") bytes"

# Read the parameters, lower the learning rate, delete the session.
curl -sf "$ADAMHUB/v1/sessions/$SID/params"; echo
curl -sf -X PATCH "$ADAMHUB/v1/sessions/$SID" -H 'Content-Type: application/json' \
  -d '{"optimizer": {"lr": 0.01}}' > /dev/null
curl -sf -X DELETE "$ADAMHUB/v1/sessions/$SID"
echo "deleted"
