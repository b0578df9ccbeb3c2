#!/bin/sh
# Installs the real programs the tests drive, from Debian's packages, when they are missing:
# Chromium (browser tests), redis-server and nginx (scale-out tests), coturn (TURN tests), ffmpeg (ffprobe),
# nftables and iproute2 (the NAT lab).
# Needs root (or passwordless sudo); otherwise it says what to install and the tests that need
# them skip (outside CI) or fail (CI=true).
set -eu
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v turnserver >/dev/null 2>&1 || missing="$missing coturn"
command -v ffprobe >/dev/null 2>&1 || missing="$missing ffmpeg"
# The scale-out test runs the nginx example of docs/scale-out.md in front of two processes.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"
# The NAT lab (tests/test_nat.py) builds its NATs with nftables in network namespaces.
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing="$missing nftables"
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing="$missing iproute2"
# The signaling benchmark (make bench): wrk drives the HTTP scenario; Node + npm run the PeerJS server.
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
  echo "install-system-deps: missing$missing; install them with apt-get (needs root)" >&2; exit 0
fi
echo "install-system-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
# coturn's package starts nothing by default; the tests start their own on free ports.
