#!/usr/bin/env bash
# The dashboard's test drives a real headless Chromium: Debian's package (Playwright's
# own browser download is not used). Installs it with apt when it is missing.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "the dashboard's test needs Chromium: install it (Debian/Ubuntu: apt-get install chromium)" >&2
  exit 1
fi
echo "installing chromium (Debian) for the dashboard's test"
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
