#!/usr/bin/env bash
# Builds the Debian packages from the workspace into target/debian/:
#   hallmonitor-collector_VERSION-1_ARCH.deb
# with cargo-deb (installed when missing), from release binaries.
#   bash deploy/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/system-deps.sh build
if ! command -v cargo-deb >/dev/null; then
    cargo install --locked cargo-deb --version 3.8.0
fi
cargo build --release -p hallmonitor-collector
cargo deb --no-build -p hallmonitor-collector
ls -l target/debian/*.deb
