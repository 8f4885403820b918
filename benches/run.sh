#!/usr/bin/env bash
# Runs the Hall Monitor benchmarks on this machine and prints the figures
# recorded in BENCHMARKS.md:
#   1. collector ingest: `loadgen` (many enrolled agents over gRPC/mTLS)
#      against a release collector on SQLite, on loopback;
#   2. agent outbox append/acknowledge throughput (`outbox bench`);
#   3. the agent's two programs idle (the daemon connected with an empty
#      queue, the session helper under Xvfb): RSS and CPU over
#      RSS_IDLE_SECS (default 600, issue 17's ten minutes); then the
#      daemon's RSS while draining a 100,000-event backlog;
#   4. the device-activity rule (`rules`);
#   5. alert latency: a severity-5 capture to the SMTP server (`alerts`;
#      needs Debian's python3-aiosmtpd).
#      title_alerts: the same from a flagged window title on an Xvfb
#      screen through the real session helper and agent daemon.
#   6. matching titles against a 10,000-phrase policy (`policy`);
#   7. screen snapshot time and session helper memory (`snapshot`, Xvfb).
#   9. the web console with 50,000 devices (`console`; not in the default
#      set: filling the database takes a few minutes): server time of the
#      device list, device pages, dashboard and snapshot view.
#  10. a fleet of idle agents (`connections`; not in the default set):
#      collector memory per connection, heartbeat round trips, reconnect
#      storm after a restart.
#   8. collector memory after repeated load: `loadgen` with 2,000 agents
#      run several times against one collector (`memory`; not in the
#      default set: it takes a few minutes).
# Usage: bash benches/run.sh [ingest|outbox|rss|rules|alerts|title_alerts|policy|snapshot|memory|console|connections]...   (default: all but memory and console)
set -euo pipefail
cd "$(dirname "$0")/.."

# BIN=DIR takes the collector and the bench tools from DIR instead of a
# release build (e.g. BIN=target/debug for `rss`, whose figures are the
# agent's own, when there is no room or time for a release collector).
if [[ -z ${BIN:-} ]]; then
    cargo build --release -q -p hallmonitor-collector -p hallmonitor-agent -p hallmonitor-benches --bins
fi
bin=$(realpath "${BIN:-$PWD/target/release}")
# The agent as shipped: the size-optimised profile (Cargo.toml), whose
# matcher and snapshot code keep full speed. A separate full build, so
# only the parts that run the agent make it: the daemon and the session
# helper, two programs.
agent_bin=${AGENT_BIN:-$PWD/target/release-agent/hallmonitor-agent}
session_bin=${SESSION_BIN:-$PWD/target/release-agent/hallmonitor-session}
build_agent() {
    [[ -n ${AGENT_BIN:-} ]] || cargo build --profile release-agent -q -p hallmonitor-agent -p hallmonitor-session --bins
}
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"

# Initialises and starts a release collector in $work/collector; sets
# TELEMETRY, ENROLL, SECRET, FINGERPRINT.
start_collector() {
    "$bin/hallmonitor-collector" --data "$work/collector" init --site Bench --hostname localhost \
        --listen 127.0.0.1:0 --enroll-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 > "$work/init.txt"
    # COLLECTOR_SET="key = value": one top-level setting of collector.toml.
    [[ -z ${COLLECTOR_SET:-} ]] || sed -i "s/^${COLLECTOR_SET%% *} = .*/$COLLECTOR_SET/" "$work/collector/collector.toml"
    SECRET=$(awk -F': *' '/enrolment secret:/ {print $2}' "$work/init.txt")
    FINGERPRINT=$(awk -F': *' '/CA fingerprint:/ {print $2}' "$work/init.txt")
    HALLMONITOR_LOG=${COLLECTOR_LOG:-warn} "$bin/hallmonitor-collector" --data "$work/collector" serve > "$work/serve.out" 2> "$work/serve.err" &
    pids+=($!)
    COLLECTOR_PID=$!
    for _ in $(seq 200); do
        grep -q listening "$work/serve.out" 2>/dev/null && break
        sleep 0.05
    done
    line=$(grep listening "$work/serve.out")
    TELEMETRY=localhost:$(sed 's/.*telemetry=[^ ]*:\([0-9]*\).*/\1/' <<< "$line")
    ENROLL=localhost:$(sed 's/.*enroll=[^ ]*:\([0-9]*\).*/\1/' <<< "$line")
}

# Starts Xvfb (1920x1080) on a free-looking display; sets display and
# xvfb_pid in the caller's scope (declare them local there).
start_xvfb() {
    display=":$((RANDOM % 100 + 300))"
    Xvfb "$display" -nolisten tcp -screen 0 1920x1080x24 2> /dev/null &
    pids+=($!)
    xvfb_pid=$!
    wait_for "Xvfb on $display" 10 '[[ -e "/tmp/.X11-unix/X${display#:}" ]]'
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# "anonymous A MiB, file-backed F MiB": heap and stacks against mapped code.
rss_split() { awk '/^RssAnon/ {a = $2} /^RssFile/ {f = $2} END {printf "anonymous %.1f MiB, file-backed %.1f MiB", a / 1024, f / 1024}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
anon_kib() { awk '/^RssAnon/ {print $2}' "/proc/$1/status"; }
# Sockets the process holds open (its listeners included).
sockets() { find "/proc/$1/fd" -lname 'socket:*' 2> /dev/null | wc -l; }
mib() { echo $((($1 + 512) / 1024)); }

bench_ingest() {
    echo "== collector ingest (SQLite, loopback, loadgen in the same machine)"
    for run in 50:1000000 500:1000000 200:5000000; do
        agents=${run%:*} events=${run#*:}
        rm -rf "$work/collector"
        start_collector
        "$bin/loadgen" --enroll "$ENROLL" --telemetry "$TELEMETRY" --ca-fingerprint "$FINGERPRINT" \
            --secret "$SECRET" --site Bench --agents "$agents" --events-per-agent $((events / agents)) \
            --batch 500 --window 4
        echo "collector peak RSS: $(($(hwm_kib "$COLLECTOR_PID") / 1024)) MiB; database $(du -sm "$work/collector" | cut -f1) MiB"
        kill "$COLLECTOR_PID"
        wait "$COLLECTOR_PID" || true
    done
}

# One collector, `loadgen` with 2,000 agents MEMORY_RUNS times (default
# 4) in a row, the same machines each time (their identities are kept
# between runs). After each run the collector's RSS is read twice: when
# every connection it held has closed (its socket count back to what it
# was idle), and settled: once it has finished the work the streams left
# (re-evaluating their devices; its CPU time still for 2 s) and one period
# of `release_memory_every_secs` (default 10 s) has passed.
bench_memory() {
    local agents=${MEMORY_AGENTS:-2000} events=${MEMORY_EVENTS_PER_AGENT:-1000} runs=${MEMORY_RUNS:-4}
    echo "== collector memory after repeated load ($agents agents, $events events each, $runs runs, one collector${MALLOC_ARENA_MAX:+, MALLOC_ARENA_MAX=$MALLOC_ARENA_MAX}${COLLECTOR_SET:+, $COLLECTOR_SET})"
    rm -rf "$work/collector" "$work/loadgen"
    COLLECTOR_LOG=warn,hallmonitor_collector::memory=info start_collector
    local pid=$COLLECTOR_PID idle_sockets
    idle_sockets=$(sockets "$pid")
    echo "idle before load: RSS $(mib "$(rss_kib "$pid")") MiB, anonymous $(mib "$(anon_kib "$pid")") MiB, sockets $idle_sockets"
    echo "| run | peak RSS (VmHWM) | RSS when connections closed | RSS settled | anonymous settled | loadgen |"
    echo "|---:|---:|---:|---:|---:|---|"
    for run in $(seq "$runs"); do
        # Resets VmHWM to the current RSS, so the peak is this run's.
        echo 5 > "/proc/$pid/clear_refs"
        local result closed
        result=$("$bin/loadgen" --enroll "$ENROLL" --telemetry "$TELEMETRY" --ca-fingerprint "$FINGERPRINT" \
            --secret "$SECRET" --site Bench --agents "$agents" --events-per-agent "$events" \
            --batch 500 --window 4 --work "$work/loadgen" 2> "$work/loadgen.err" | tail -1) || {
            cat "$work/loadgen.err"
            return 1
        }
        wait_for "connections closed" 120 "(( \$(sockets $pid) <= $idle_sockets ))"
        closed=$(mib "$(rss_kib "$pid")")
        wait_for "collector idle" 300 "(( \$(cpu_ticks_over_2s $pid) < 10 ))"
        sleep "${MEMORY_RELEASE_WAIT:-12}"
        echo "| $run | $(mib "$(hwm_kib "$pid")") MiB | $closed MiB | $(mib "$(rss_kib "$pid")") MiB | $(mib "$(anon_kib "$pid")") MiB | ${result#loadgen: } |"
    done
    grep 'freed memory returned' "$work/serve.err" | tail -3 || true
    kill "$pid"
    wait "$pid" || true
}

# wait_for WHAT SECONDS CONDITION: polls CONDITION (a shell expression)
# until it holds; says so and goes on after SECONDS.
wait_for() {
    local deadline=$((SECONDS + $2))
    until eval "$3"; do
        ((SECONDS < deadline)) || { echo "($1: still not after $2 s)"; return 0; }
        sleep 0.1
    done
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU time (clock ticks, usually 1/100 s) process $1 uses over the next 2 s.
cpu_ticks_over_2s() {
    local before
    before=$(cpu_ticks "$1")
    sleep 2
    echo $(($(cpu_ticks "$1") - before))
}

bench_outbox() {
    echo "== agent outbox"
    "$bin/outbox" bench --events 100000
}

# Starts Debian's aiosmtpd on loopback with a Maildir in $work/maildir and
# initialises a collector in $work/collector that mails a head-teacher
# recipient through it; sets SMTP_PID, SECRET and FINGERPRINT.
init_mailing_collector() {
    rm -rf "$work/collector" "$work/maildir"
    local smtp_port
    smtp_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    /usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$smtp_port" -c aiosmtpd.handlers.Mailbox "$work/maildir" &
    pids+=($!)
    SMTP_PID=$!
    for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$smtp_port") 2>/dev/null && break; sleep 0.05; done
    "$bin/hallmonitor-collector" --data "$work/collector" init --site Bench --hostname localhost \
        --listen 127.0.0.1:0 --enroll-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 > "$work/init.txt"
    sed -i -e 's/^host = ""/host = "127.0.0.1"/' -e "s/^port = 587/port = $smtp_port/" \
        -e 's/^security = "starttls"/security = "none"/' "$work/collector/collector.toml"
    "$bin/hallmonitor-collector" --data "$work/collector" recipients add --site Bench \
        --role head_teacher --email head@bench.example > /dev/null
    SECRET=$(awk -F': *' '/enrolment secret:/ {print $2}' "$work/init.txt")
    FINGERPRINT=$(awk -F': *' '/CA fingerprint:/ {print $2}' "$work/init.txt")
}

# Serves the collector initialised above; sets COLLECTOR_PID, TELEMETRY
# and ENROLL.
serve_collector() {
    HALLMONITOR_LOG=warn "$bin/hallmonitor-collector" --data "$work/collector" serve > "$work/serve.out" 2> "$work/serve.err" &
    pids+=($!)
    COLLECTOR_PID=$!
    wait_for "the collector to listen" 20 'grep -qs listening "$work/serve.out"'
    local line
    line=$(grep listening "$work/serve.out")
    TELEMETRY=localhost:$(sed 's/.*telemetry=[^ ]*:\([0-9]*\).*/\1/' <<< "$line")
    ENROLL=localhost:$(sed 's/.*enroll=[^ ]*:\([0-9]*\).*/\1/' <<< "$line")
}

bench_alerts() {
    echo "== alert latency (capture → SMTP, aiosmtpd on loopback)"
    init_mailing_collector
    serve_collector
    "$bin/alert_latency" --enroll "$ENROLL" --telemetry "$TELEMETRY" \
        --ca-fingerprint "$FINGERPRINT" --secret "$SECRET" --site Bench --maildir "$work/maildir" --captures 100
    kill "$COLLECTOR_PID" "$SMTP_PID"
    wait "$COLLECTOR_PID" "$SMTP_PID" 2>/dev/null || true
}

# End to end as the DSL experiences it: a flagged title on an Xvfb screen,
# the real session helper and agent daemon (release-agent build), the
# collector, aiosmtpd; `title_alert` times title → email.
bench_title_alerts() {
    echo "== alert latency end to end (Xvfb title → helper → daemon → collector → SMTP)"
    build_agent
    init_mailing_collector
    serve_collector
    cat > "$work/agent.toml" <<EOF
collector = "$TELEMETRY"
enroll_address = "$ENROLL"
ca_fingerprint = "$FINGERPRINT"
site = "Bench"
enrollment_secret = "$SECRET"
data_dir = "$work/agent"
machine_id = "bench-title-alert"
[capture]
socket = "$work/agent.sock"
EOF
    local agent=("$agent_bin" --config "$work/agent.toml")
    HALLMONITOR_LOG=warn "${agent[@]}" enroll > /dev/null
    local display xvfb_pid
    start_xvfb
    HALLMONITOR_LOG=warn "${agent[@]}" run 2> "$work/agent.err" &
    pids+=($!)
    local agent_pid=$!
    wait_for "the agent's socket" 30 '[[ -S "$work/agent.sock" ]]'
    DISPLAY=$display HALLMONITOR_LOG=info "$session_bin" --socket "$work/agent.sock" 2> "$work/helper.err" &
    pids+=($!)
    local helper_pid=$!
    wait_for "the helper to connect" 30 'grep -qs "policy received" "$work/helper.err"'
    DISPLAY=$display "$bin/title_alert" --maildir "$work/maildir" --collector "$bin/hallmonitor-collector" \
        --data "$work/collector" --alerts "${TITLE_ALERTS:-100}"
    kill "$helper_pid" "$agent_pid" "$xvfb_pid" "$COLLECTOR_PID" "$SMTP_PID"
    wait "$helper_pid" "$agent_pid" "$xvfb_pid" "$COLLECTOR_PID" "$SMTP_PID" 2>/dev/null || true
}

bench_policy() {
    echo "== suspicious-activity policy matching"
    "$bin/policy"
    "$bin/policy" --overlap 100 | tail -1
}

bench_snapshot() {
    echo "== screen snapshot and session helper memory (Xvfb 1920x1080)"
    build_agent
    local display xvfb_pid
    start_xvfb
    DISPLAY=$display "$bin/snapshot" --rounds 20
    DISPLAY=$display HALLMONITOR_LOG=warn "$session_bin" --socket "$work/none.sock" &
    pids+=($!)
    local helper_pid=$!
    sleep 10
    echo "session helper idle: RSS $(($(rss_kib "$helper_pid") / 1024)) MiB ($(rss_split "$helper_pid"))"
    DISPLAY=$display "$bin/title_burst" --pid "$helper_pid" --changes 1000
    echo "session helper after the burst: RSS $(($(rss_kib "$helper_pid") / 1024)) MiB ($(rss_split "$helper_pid"))"
    kill "$helper_pid" "$xvfb_pid"
    wait "$helper_pid" "$xvfb_pid" 2>/dev/null || true
}

bench_rules() {
    echo "== device-activity rule"
    "$bin/rules"
}

bench_rss() {
    echo "== agent RSS"
    build_agent
    rm -rf "$work/collector"
    start_collector
    cat > "$work/agent.toml" <<EOF
collector = "$TELEMETRY"
enroll_address = "$ENROLL"
ca_fingerprint = "$FINGERPRINT"
site = "Bench"
enrollment_secret = "$SECRET"
data_dir = "$work/agent"
machine_id = "bench-rss"
[capture]
socket = "$work/agent.sock"
EOF
    agent=("$agent_bin" --config "$work/agent.toml")
    status() { "${agent[@]}" status --format json | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
    HALLMONITOR_LOG=warn "${agent[@]}" enroll > /dev/null
    "${agent[@]}" status > /dev/null 2>&1 || true

    # Idle: the daemon connected with an empty queue (one heartbeat a
    # minute), and a session helper on an X display, connected to it, with
    # nothing on screen changing.
    local display xvfb_pid
    start_xvfb
    HALLMONITOR_LOG=warn "${agent[@]}" run 2> "$work/agent.err" &
    pids+=($!)
    local pid=$!
    until [[ $(status connection) == connected && $(status queue_depth) == 0 ]]; do sleep 0.2; done
    DISPLAY=$display HALLMONITOR_LOG=info "$session_bin" --socket "$work/agent.sock" 2> "$work/helper.err" &
    pids+=($!)
    local helper_pid=$!
    wait_for "the helper to connect" 30 'grep -qs "policy received" "$work/helper.err"'
    sleep 10
    echo "binaries: daemon $(du -m "$agent_bin" | cut -f1) MB, helper $(du -m "$session_bin" | cut -f1) MB; daemon links: $(ldd "$agent_bin" | awk '{print $1}' | grep -v '^/' | tr '\n' ' ')"
    local idle=${RSS_IDLE_SECS:-600} daemon_cpu helper_cpu daemon_peak=0 helper_peak=0 rss
    daemon_cpu=$(cpu_ticks "$pid")
    helper_cpu=$(cpu_ticks "$helper_pid")
    local until=$((SECONDS + idle))
    while ((SECONDS < until)); do
        rss=$(rss_kib "$pid"); ((rss > daemon_peak)) && daemon_peak=$rss
        rss=$(rss_kib "$helper_pid"); ((rss > helper_peak)) && helper_peak=$rss
        sleep 5
    done
    daemon_cpu=$(($(cpu_ticks "$pid") - daemon_cpu))
    helper_cpu=$(($(cpu_ticks "$helper_pid") - helper_cpu))
    local tck
    tck=$(getconf CLK_TCK)
    percent() { python3 -c "print(f'{$1 / $tck:.2f} s CPU, {100 * $1 / $tck / $idle:.3f} % of a core')"; }
    echo "agent daemon idle $idle s (connected, empty queue): RSS $(mib "$(rss_kib "$pid")") MiB ($(rss_split "$pid")), highest sampled $(mib "$daemon_peak") MiB; $(percent "$daemon_cpu")"
    echo "session helper idle $idle s (connected, Xvfb): RSS $(mib "$(rss_kib "$helper_pid")") MiB ($(rss_split "$helper_pid")), highest sampled $(mib "$helper_peak") MiB; $(percent "$helper_cpu")"
    kill "$helper_pid" "$pid" "$xvfb_pid"
    wait "$helper_pid" "$pid" "$xvfb_pid" || true

    "$bin/outbox" fill --data "$work/agent" --events 100000
    HALLMONITOR_LOG=warn "${agent[@]}" run 2> "$work/agent.err" &
    pids+=($!)
    pid=$!
    local start peak=0
    start=$(date +%s.%N)
    while true; do
        rss=$(rss_kib "$pid")
        ((rss > peak)) && peak=$rss
        (($(status queue_depth) == 0)) && break
        sleep 0.2
    done
    echo "agent draining 100000 events: $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s, peak RSS sampled $((peak / 1024)) MiB, VmHWM $(($(hwm_kib "$pid") / 1024)) MiB"
    sleep 10
    echo "agent idle again 10 s after draining: RSS $(($(rss_kib "$pid") / 1024)) MiB"
    kill "$pid"
}

# Server time of each URL (first byte minus request sent, over one kept-
# alive connection): p50, p95 and max in ms. $1 names the set.
console_times() {
    local name=$1
    shift
    local args=()
    for url in "$@"; do args+=(-o /dev/null -w '%{time_starttransfer} %{time_pretransfer} %{http_code}\n' "$url"); done
    curl -sS --cacert "$work/collector/pki/ca.crt" --resolve "localhost:$API_PORT:127.0.0.1" -b "$work/cookies" "${args[@]}" > "$work/times.txt"
    awk '$3 != 200 { bad++ } { print ($1 - $2) * 1000 }' "$work/times.txt" | sort -n | awk -v name="$name" '{ t[NR] = $1 } END {
        p50 = t[int(NR * 0.5 + 0.5)]; p95 = t[int(NR * 0.95 + 0.5)];
        printf "console %s: %d requests, server time p50 %.1f ms, p95 %.1f ms, max %.1f ms\n", name, NR, p50, p95, t[NR] }'
    if awk '$3 != 200 { exit 1 }' "$work/times.txt"; then :; else echo "  (some requests failed: $(awk '$3 != 200' "$work/times.txt" | head -3))"; fi
}

bench_console() {
    local devices=${CONSOLE_DEVICES:-50000}
    "$bin/hallmonitor-collector" --data "$work/collector" init --site Bench --hostname localhost \
        --listen 127.0.0.1:0 --enroll-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 > "$work/init.txt"
    "$bin/console_fixture" --data "$work/collector" --devices "$devices"
    local password
    password=$("$bin/hallmonitor-collector" --data "$work/collector" users add bench --role dsl | sed 's/.*(shown once): //')
    HALLMONITOR_LOG=warn "$bin/hallmonitor-collector" --data "$work/collector" serve > "$work/serve.out" 2> "$work/serve.err" &
    pids+=($!)
    for _ in $(seq 200); do grep -q listening "$work/serve.out" 2> /dev/null && break; sleep 0.05; done
    API_PORT=$(sed 's/.*api=[^ ]*:\([0-9]*\).*/\1/' <<< "$(grep listening "$work/serve.out")")
    local base=https://localhost:$API_PORT
    curl -sS --cacert "$work/collector/pki/ca.crt" --resolve "localhost:$API_PORT:127.0.0.1" -c "$work/cookies" \
        -o /dev/null -d "username=bench&password=$password" "$base/login"
    # The collector's first rule pass over every device runs at start:
    # wait until its CPU time stands still for 2 s, so it is not timed.
    local collector_pid=${pids[-1]} before after
    while true; do
        before=$(cpu_ticks "$collector_pid"); sleep 2; after=$(cpu_ticks "$collector_pid")
        ((after - before <= 2)) && break
    done
    local urls=() n
    for n in $(seq 0 39); do urls+=("$base/devices?after=lab-$(printf %05d $((n * 1201 % devices)))%1Fdev-bench-$(printf %05d $((n * 1201 % devices)))"); done
    console_times "device list, a page further on" "${urls[@]}"
    urls=()
    for n in $(seq 0 39); do urls+=("$base/devices?q=lab-$(printf %03d $((n * 12 % 500)))"); done
    console_times "device list, hostname search" "${urls[@]}"
    urls=()
    for n in $(seq 0 39); do urls+=("$base/devices?status=offline&compliance=non_compliant&after=lab-$(printf %05d $((n * 1201 % devices)))%1Fdev-bench-$(printf %05d $((n * 1201 % devices)))"); done
    console_times "device list, offline and non-compliant" "${urls[@]}"
    urls=()
    for n in $(seq 0 39); do urls+=("$base/devices?q=pupil$((n * 22 % 900))"); done
    console_times "device list, account search" "${urls[@]}"
    urls=()
    for n in $(seq 0 39); do urls+=("$base/devices?os=ubuntu&status=online"); done
    console_times "device list, OS and online" "${urls[@]}"
    urls=()
    for n in $(seq 0 99); do urls+=("$base/devices/dev-bench-$(printf %05d $((n * 487 % devices)))"); done
    console_times "device detail" "${urls[@]}"
    urls=()
    for n in $(seq 0 19); do urls+=("$base/"); done
    console_times "dashboard" "${urls[@]}"
    urls=()
    for n in $(seq 1 50); do urls+=("$base/incidents/$n/captures/$n/image"); done
    console_times "snapshot view (150 KB, decrypted)" "${urls[@]}"
    echo "collector RSS after the console runs: $(mib "$(rss_kib "${pids[-1]}")") MiB"
}

# A fleet of mostly idle agents (`idle_agents`, one mTLS stream each, a
# heartbeat a minute) against one collector: its RSS idle and with the
# fleet connected (so the cost of a connection), heartbeat round trips,
# and the reconnect storm after the collector restarts (SIGTERM, serve
# again on the same ports). CONNECTIONS (default 19000: this container's
# hard descriptor limit is 20,000 per process and the collector keeps a
# reserve) agents.
bench_connections() {
    local agents=${CONNECTIONS:-19000}
    echo "== $agents idle agents connected to one collector"
    rm -rf "$work/collector"
    local port
    free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
    port=$(free_port)
    "$bin/hallmonitor-collector" --data "$work/collector" init --site Bench --hostname localhost \
        --listen "127.0.0.1:$port" --enroll-listen "127.0.0.1:$(free_port)" --api-listen 127.0.0.1:0 > "$work/init.txt"
    SECRET=$(awk -F': *' '/enrolment secret:/ {print $2}' "$work/init.txt")
    FINGERPRINT=$(awk -F': *' '/CA fingerprint:/ {print $2}' "$work/init.txt")
    serve_collector
    local idle_rss
    sleep 5
    idle_rss=$(rss_kib "$COLLECTOR_PID")
    echo "collector idle: RSS $(mib "$idle_rss") MiB"
    "$bin/idle_agents" --enroll "$ENROLL" --telemetry "$TELEMETRY" --ca-fingerprint "$FINGERPRINT" \
        --secret "$SECRET" --site Bench --agents "$agents" --work "$work/idle-agents" \
        --report-secs 60 > "$work/idle.out" 2> "$work/idle.err" &
    pids+=($!)
    local fleet_pid=$!
    wait_for "all agents connected" 1800 'grep -qs "all $agents connected" "$work/idle.out"'
    grep "identities ready" "$work/idle.err" || true
    grep "connected in" "$work/idle.out"
    # One heartbeat interval, so every agent has sent and been answered.
    wait_for "a heartbeat report" 150 'grep -qs "heartbeats acknowledged" "$work/idle.out"'
    local rss
    rss=$(rss_kib "$COLLECTOR_PID")
    echo "collector with $agents agents connected: RSS $(mib "$rss") MiB ($(rss_split "$COLLECTOR_PID")), $(( (rss - idle_rss) / agents )) KiB per connection; idle_agents RSS $(mib "$(rss_kib "$fleet_pid")") MiB"
    grep "heartbeats acknowledged" "$work/idle.out" | tail -1
    kill -TERM "$COLLECTOR_PID"
    wait "$COLLECTOR_PID" || true
    serve_collector
    wait_for "the fleet to reconnect" 600 'grep -qs "reconnected" "$work/idle.out"'
    grep "reconnected" "$work/idle.out" || true
    echo "collector after the reconnect storm: RSS $(mib "$(rss_kib "$COLLECTOR_PID")") MiB, peak $(mib "$(hwm_kib "$COLLECTOR_PID")") MiB; refused handshakes in its log: $(grep -c -i 'refus\|limit' "$work/serve.err" || true)"
    wait_for "a heartbeat report after the storm" 150 '(( $(grep -c "heartbeats acknowledged" "$work/idle.out") >= 3 ))'
    grep "heartbeats acknowledged" "$work/idle.out" | tail -1
    kill "$fleet_pid" "$COLLECTOR_PID"
    wait "$fleet_pid" "$COLLECTOR_PID" 2>/dev/null || true
}

what=("$@")
((${#what[@]})) || what=(ingest outbox rss rules alerts title_alerts policy snapshot)
for w in "${what[@]}"; do "bench_$w"; done
