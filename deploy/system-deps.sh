#!/usr/bin/env bash
# Installs the Debian packages Hall Monitor needs when they are missing
# (as root; otherwise names what is missing and fails).
#   bash deploy/system-deps.sh build   # to build: the C libraries xcap links
#   bash deploy/system-deps.sh test    # to build and run every test
set -euo pipefail

# xcap (the session helper's screen snapshots; hallmonitor-session only, the
# daemon links none of them) links these on Linux; pkg-config and libclang
# find and bind them at build time.
build=(pkg-config libclang-dev libxcb1-dev libxcb-randr0-dev libxcb-render0-dev
       libxcb-shm0-dev libegl-dev libwayland-dev libgbm-dev libpipewire-0.3-dev
       libspa-0.2-dev)
# The real servers the end-to-end tests use: curl (the API's HTTPS client),
# aiosmtpd (SMTP), Xvfb and openbox (an X server and a window manager for
# the session helper), chromium and chromium-driver (a headless browser
# driven over WebDriver for the console's browser tests), libfaketime (moves
# the agent's wall clock under it for the clock-jump tamper signal),
# fonts-dejavu-core (the acceptable-use window's font, also a dependency of
# the agent's package).
test=(curl python3-aiosmtpd xvfb openbox chromium chromium-driver libfaketime
      fonts-dejavu-core)

wanted=("${build[@]}")
[[ "${1:-build}" == "test" ]] && wanted+=("${test[@]}")
missing=()
for pkg in "${wanted[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
    echo "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
fi
