#!/usr/bin/env bash
# Hall Monitor on the embedded default, on this machine: a collector (SQLite,
# loopback) in ./demo-data, and a local agent enrolled with it. Runs until
# Ctrl-C. With --check it waits for the device to appear, prints what to
# look at, and stops (the test command uses this to keep the README true).
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
[[ "${1:-}" == "--check" ]] && check=1

bash deploy/system-deps.sh build
cargo build --workspace --bins --quiet
bin="$PWD/target/debug"
demo="$PWD/demo-data"
[[ $check -eq 1 ]] && demo="$(mktemp -d)/demo-data"
collector_data="$demo/collector"
mkdir -p "$demo"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ $check -eq 1 ]] && rm -rf "$(dirname "$demo")"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ ! -f "$collector_data/collector.toml" ]]; then
    "$bin/hallmonitor-collector" --data "$collector_data" init \
        --site "Demo Primary School" --hostname localhost --hostname 127.0.0.1 \
        --listen 127.0.0.1:0 --enroll-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 > "$demo/init.txt"
    chmod 600 "$demo/init.txt"
fi
secret=$(awk -F': *' '/enrolment secret:/ {print $2}' "$demo/init.txt")
fingerprint=$(awk -F': *' '/CA fingerprint:/ {print $2}' "$demo/init.txt")

"$bin/hallmonitor-collector" --data "$collector_data" serve > "$demo/collector.out" 2> "$demo/collector.log" &
pids+=($!)
for _ in $(seq 1 200); do
    grep -q listening "$demo/collector.out" 2>/dev/null && break
    kill -0 "${pids[0]}" 2>/dev/null || { cat "$demo/collector.log" >&2; exit 1; }
    sleep 0.1
done
telemetry=$(grep -o 'telemetry=[^ ]*' "$demo/collector.out" | cut -d= -f2)
enroll=$(grep -o 'enroll=[^ ]*' "$demo/collector.out" | cut -d= -f2)

cat > "$demo/agent.toml" <<TOML
collector = "localhost:${telemetry##*:}"
enroll_address = "localhost:${enroll##*:}"
ca_fingerprint = "$fingerprint"
site = "Demo Primary School"
enrollment_secret = "$secret"
data_dir = "$demo/agent"
heartbeat_interval_secs = 5

[capture]
socket = "$demo/agent.sock"
TOML
chmod 600 "$demo/agent.toml"
"$bin/hallmonitor-agent" --config "$demo/agent.toml" run 2> "$demo/agent.log" &
pids+=($!)

for _ in $(seq 1 300); do
    "$bin/hallmonitor-collector" --data "$collector_data" devices list --format json 2>/dev/null \
        | grep -q '"status": "online"' && break
    kill -0 "${pids[1]}" 2>/dev/null || { cat "$demo/agent.log" >&2; exit 1; }
    sleep 0.1
done

echo "== Devices the collector knows (hallmonitor-collector --data $collector_data devices list)"
"$bin/hallmonitor-collector" --data "$collector_data" devices list
echo
echo "== The agent's view (hallmonitor-agent --config $demo/agent.toml status)"
"$bin/hallmonitor-agent" --config "$demo/agent.toml" status
echo
if [[ $check -eq 1 ]]; then
    "$bin/hallmonitor-collector" --data "$collector_data" devices list --format json | grep -q '"status": "online"' \
        || { echo "quickstart: the device never came online" >&2; exit 1; }
    echo "quickstart check: ok"
    exit 0
fi
echo "Collector data, logs and the secrets printed at init are in $demo."
echo "Try: $bin/hallmonitor-collector --data $collector_data devices show <DEVICE>"
echo "Running; press Ctrl-C to stop both."
wait
