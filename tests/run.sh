#!/usr/bin/env bash
# Runs every test of Hall Monitor: unit tests, end-to-end tests that start
# the real binaries on loopback, and the quickstart in check mode.
# System packages the tests need are installed here when running as root
# (SQLite is bundled and the protobuf compiler is pure Rust; curl is the
# HTTPS client of the API tests; Debian's python3-aiosmtpd is the real SMTP
# server the notification tests send to; Xvfb is the X server the session
# helper's tests open windows on); otherwise what is missing is named.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=(curl python3-aiosmtpd xvfb)
missing=()
for pkg in "${need_packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "tests/run.sh: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
        exit 1
    fi
fi

# End-to-end tests start the binaries from target/debug: build them first.
cargo build --workspace --bins
bash deploy/quickstart.sh --check

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
