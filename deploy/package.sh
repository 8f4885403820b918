#!/usr/bin/env bash
# Builds the Debian packages from the workspace into target/debian/:
#   hallmonitor-collector_VERSION-1_ARCH.deb  (release profile)
#   hallmonitor-agent_VERSION-1_ARCH.deb      (daemon and session helper,
#                                              release-agent profile: small)
# with cargo-deb (installed when missing).
#   bash deploy/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/system-deps.sh build
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb 3.8.0"; then
    cargo install --locked cargo-deb --version 3.8.0
fi
cargo build --release -p hallmonitor-collector
cargo deb --no-build -p hallmonitor-collector
cargo build --profile release-agent -p hallmonitor-agent -p hallmonitor-session
cargo deb --no-build --profile release-agent -p hallmonitor-agent
ls -l target/debian/*.deb
