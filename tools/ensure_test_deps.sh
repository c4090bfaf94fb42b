#!/usr/bin/env bash
# What the checks and tests need beyond Python, from Debian's packages when missing:
# - chromium, for the dashboard's test (Playwright's own browser download is not used);
# - haproxy, for the test that runs the compose file's cluster topology natively;
# - node and npm (Node >= 18), for the TypeScript client's checks and tests.
# With arguments (chromium, haproxy, node), only those.
set -euo pipefail
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(chromium haproxy node)
missing=()
for tool in "${wanted[@]}"; do
  case "$tool" in
    chromium)
      command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium) ;;
    haproxy)
      command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy) ;;
    node)
      command -v node >/dev/null || missing+=(nodejs)
      command -v npm >/dev/null || missing+=(npm) ;;
  esac
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install ${missing[*]} first (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing ${missing[*]} (Debian)"
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
