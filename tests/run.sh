#!/usr/bin/env bash
# Runs every test of Hall Monitor: unit tests, end-to-end tests that start
# the real binaries on loopback, and the quickstart in check mode.
# System packages the build and the tests need (the C libraries xcap
# links; curl, aiosmtpd, Xvfb and Chromium as real servers) are installed by
# deploy/system-deps.sh when running as root; otherwise it names what is
# missing. The browser tests' accessibility checker (axe-core, from npm)
# is installed under target/axe-core when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/system-deps.sh test

# Pinned: a new axe-core release may add rules, and the console's
# accessibility checks should change only when we choose to.
axe_version=4.14.1
axe_dir=target/axe-core/node_modules/axe-core
if [[ ! -f $axe_dir/axe.min.js ]] || ! grep -q "\"version\": \"$axe_version\"" "$axe_dir/package.json" 2>/dev/null; then
    command -v npm >/dev/null || { echo "npm (Node.js) is needed to install axe-core for the browser tests" >&2; exit 1; }
    npm install --prefix target/axe-core --no-audit --no-fund --loglevel=error "axe-core@$axe_version"
fi

# The package tests build .debs with cargo-deb (pinned, like axe-core).
cargo_deb_version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $cargo_deb_version"; then
    cargo install --locked --quiet cargo-deb --version "$cargo_deb_version"
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
