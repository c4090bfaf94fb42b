#!/usr/bin/env bash
# What the tests need beyond Python, from Debian's packages when it is missing:
# - Chromium, for the dashboard's test (Playwright's own browser download is not used);
# - HAProxy, for the test that runs the compose file's cluster topology natively.
set -euo pipefail
missing=()
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  missing+=(chromium)
fi
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  missing+=(haproxy)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "the tests need ${missing[*]}: install them (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing ${missing[*]} (Debian) for the tests"
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
