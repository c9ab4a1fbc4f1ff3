#!/usr/bin/env bash
# Debian packages the test suite drives for real: Chromium (the live dashboard is tested in a
# headless browser) and Prometheus (a real server scrapes a real actor-infer; promtool checks
# the configs). Installed once with apt-get when missing; needs root (as on CI machines).
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "[test-deps] installing: ${missing[*]}" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The package may start a system Prometheus on :9090; the tests start their own.
pkill -x prometheus 2>/dev/null || true
