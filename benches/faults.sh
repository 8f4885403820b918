#!/usr/bin/env bash
# Fault scripts for the resilience issue (13): each runs real collector and
# agent processes on loopback (127.0.0.1), injects one fault, lets delivery
# finish and prints, per agent, exact counts:
#
#   queued      events the agent numbered (status: next_seq - 1)
#   stored      events the collector holds for the device (devices show: events_stored)
#   duplicated  events the collector recognised as already stored (sum of
#               `duplicates=` in the agent's "batch acknowledged" log lines)
#   evicted     events the agent evicted from a full outbox (status: evicted)
#   reported_evicted  what the collector was told of them (devices show: outbox.evicted)
#   quarantined events too large to send (status: quarantined)
#
# and a verdict: `OK: every queued event stored once` when
# stored + evicted + quarantined == queued and reported_evicted == evicted,
# else `LOST: …` (the script then exits 1).
#
# Usage: bash benches/faults.sh NAME...   NAME: kill-agent kill-collector
#        disk-full damaged-outbox damaged-database descriptors lost-ack clock all
# disk-full needs root (it mounts tmpfs). Debug binaries (cargo build).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z ${FAULTS_BIN:-} ]]; then
    cargo build -q -p hallmonitor-collector -p hallmonitor-agent -p hallmonitor-benches --bins
fi
bin=${FAULTS_BIN:-$PWD/target/debug}
work=$(mktemp -d /tmp/hallmonitor-faults.XXXXXX)
pids=()
mounts=()
failed=0
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -CONT "$pid" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    local m
    for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    if [[ -n ${FAULTS_KEEP:-} ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "[$(date +%T)] $*"; }
die() {
    echo "FAILED: $*" >&2
    exit 1
}

# wait_until DESCRIPTION SECONDS COMMAND...: polls COMMAND every 0.2 s.
wait_until() {
    local what=$1 secs=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@"; do
        ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what (logs in $work; FAULTS_KEEP=1 keeps them)"
        sleep 0.2
    done
}

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {'d': d}))" "$1"; }

# ---- the collector ----------------------------------------------------------

# collector_init DIR: a fresh data directory; sets C_DIR, SECRET, FINGERPRINT.
collector_init() {
    C_DIR=$1
    "$bin/hallmonitor-collector" --data "$C_DIR" init --site Faults --hostname localhost \
        --listen 127.0.0.1:0 --enroll-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 > "$work/init.txt"
    SECRET=$(awk -F': *' '/enrolment secret:/ {print $2}' "$work/init.txt")
    FINGERPRINT=$(awk -F': *' '/CA fingerprint:/ {print $2}' "$work/init.txt")
    TELEMETRY_PORT=0 ENROLL_PORT=0
}

# collector_start: serve on the ports of the last run (fresh ones the first
# time); sets C_PID, TELEMETRY_PORT, ENROLL_PORT. COLLECTOR_NOFILE lowers
# its descriptor limit.
collector_start() {
    local out=$work/serve.$SECONDS.$RANDOM.out
    (
        [[ -n ${COLLECTOR_NOFILE:-} ]] && ulimit -n "$COLLECTOR_NOFILE"
        HALLMONITOR_LOG=info,hallmonitor_collector=debug exec "$bin/hallmonitor-collector" --data "$C_DIR" serve \
            --listen "127.0.0.1:$TELEMETRY_PORT" --enroll-listen "127.0.0.1:$ENROLL_PORT" --api-listen 127.0.0.1:0
    ) > "$out" 2>> "$work/collector.log" &
    C_PID=$!
    pids+=("$C_PID")
    local deadline=$((SECONDS + 60))
    until grep -q listening "$out" 2>/dev/null; do
        kill -0 "$C_PID" 2>/dev/null || die "collector exited: $(tail -5 "$work/collector.log")"
        ((SECONDS < deadline)) || die "collector did not listen within 60s"
        sleep 0.1
    done
    local line
    line=$(grep listening "$out")
    TELEMETRY_PORT=$(sed 's/.*telemetry=[^ ]*:\([0-9]*\).*/\1/' <<< "$line")
    ENROLL_PORT=$(sed 's/.*enroll=[^ ]*:\([0-9]*\).*/\1/' <<< "$line")
}

# collector_stop SIGNAL: signals the collector and waits for it to exit.
collector_stop() {
    kill "-$1" "$C_PID" 2>/dev/null || true
    wait "$C_PID" 2>/dev/null || true
}

device_json() { "$bin/hallmonitor-collector" --data "$C_DIR" devices show "$1" --format json; }
stored() { device_json "$1" | json 'd["device"]["events_stored"]'; }

# ---- agents -----------------------------------------------------------------

declare -A A_DIR A_PID A_ID
AGENTS=()

# agent_new NAME [DELIVERY_LINES] [DATA_DIR]: config and enrolment.
agent_new() {
    local name=$1 delivery=${2:-} data=${3:-$work/agents/$1/data}
    local root=$work/agents/$name
    mkdir -p "$root" "$data"
    : > "$root/empty.utmp"
    cat > "$root/agent.toml" <<EOF
collector = "localhost:$TELEMETRY_PORT"
enroll_address = "localhost:$ENROLL_PORT"
ca_fingerprint = "$FINGERPRINT"
site = "Faults"
enrollment_secret = "$SECRET"
data_dir = "$data"
heartbeat_interval_secs = 1
machine_id = "faults-$name"
[delivery]
batch_linger_ms = 20
reconnect_initial_ms = 100
reconnect_max_secs = 1
$delivery
[sessions]
source = "utmp"
utmp_path = "$root/empty.utmp"
[capture]
socket = "$root/agent.sock"
policy_override = "$root/policy.local.toml"
[files]
watch = []
EOF
    A_DIR[$name]=$data
    AGENTS+=("$name")
    agent "$name" enroll > /dev/null
    A_ID[$name]=$(status "$name" 'd["device_id"]')
}

agent() {
    local name=$1
    shift
    HALLMONITOR_LOG=${LOG:-warn} "$bin/hallmonitor-agent" --config "$work/agents/$name/agent.toml" "$@"
}
# AGENT_WRAPPER (e.g. "faketime +3650d") runs the daemon under a command.
agent_start() {
    local name=$1
    # exec: $! is the daemon itself, so kill -9 reaches it.
    (
        export HALLMONITOR_LOG=info,hallmonitor_agent=debug
        exec ${AGENT_WRAPPER:-} "$bin/hallmonitor-agent" --config "$work/agents/$name/agent.toml" run
    ) >> "$work/agents/$name/agent.log" 2>&1 &
    A_PID[$name]=$!
    pids+=("$!")
}
status() { agent "$1" status --format json | json "$2"; }
agent_stop() {
    local name=$1 signal=${2:-TERM}
    kill "-$signal" "${A_PID[$name]}" 2>/dev/null || true
    wait "${A_PID[$name]}" 2>/dev/null || true
    A_PID[$name]=
}
# fill NAME N: N session events into a stopped agent's outbox.
fill() { "$bin/outbox" fill --data "${A_DIR[$1]}" --events "$2" > /dev/null; }

queue_empty() { [[ $(status "$1" 'd["queue_depth"]') == 0 ]]; }
stored_at_least() { (($(stored "$1") >= $2)); }
connected() { [[ $(status "$1" 'd["connection"]') == connected ]]; }

# settle NAME: runs the agent until its queue is empty, then stops it
# (SIGTERM); again if its last events were queued while it stopped.
settle() {
    local name=$1 round
    for round in 1 2 3; do
        [[ -n ${A_PID[$name]:-} ]] || agent_start "$name"
        wait_until "$name's queue to drain" 180 queue_empty "$name"
        agent_stop "$name"
        queue_empty "$name" && return 0
    done
    die "$name kept events queued after three stops"
}

# report NAME: the counts line and the verdict.
report() {
    local name=$1 s d
    s=$(agent "$name" status --format json)
    d=$(device_json "${A_ID[$name]}")
    local queued stored duplicated evicted reported quarantined
    queued=$(json 'd["next_seq"] - 1' <<< "$s")
    evicted=$(json 'sum(d["evicted"].values())' <<< "$s")
    quarantined=$(json 'd["quarantined"]' <<< "$s")
    stored=$(json 'd["device"]["events_stored"]' <<< "$d")
    reported=$(json 'sum(d["device"]["outbox"]["evicted"].values())' <<< "$d")
    duplicated=$(grep -ho 'batch acknowledged.* duplicates=[0-9]*' "$work/agents/$name/agent.log" |
        sed 's/.*duplicates=//' | awk '{n += $1} END {print n + 0}')
    echo "$name: queued=$queued stored=$stored duplicated=$duplicated evicted=$evicted reported_evicted=$reported quarantined=$quarantined"
    if ((stored + evicted + quarantined == queued && reported == evicted)); then
        echo "$name: OK: every queued event stored once"
    else
        echo "$name: LOST: stored + evicted + quarantined = $((stored + evicted + quarantined)) of $queued queued; reported_evicted $reported of $evicted"
        failed=1
    fi
}

# fresh NAME: an empty work area for one scenario.
fresh() {
    say "== $1"
    AGENTS=()
    A_DIR=() A_PID=() A_ID=()
    rm -rf "$work/collector" "$work/agents"
    : > "$work/collector.log"
}

finish() {
    local name
    for name in "${AGENTS[@]}"; do settle "$name"; done
    for name in "${AGENTS[@]}"; do report "$name"; done
    collector_stop TERM
}

# ---- scenarios --------------------------------------------------------------

# An agent with a 20,000-event backlog (small batches, so the drain takes
# a while) killed with SIGKILL five times while delivering.
fault_kill-agent() {
    fresh kill-agent
    local total=20000 kills=5 step n
    collector_init "$work/collector"
    collector_start
    agent_new a1 "batch_max_events = 20"
    fill a1 "$total"
    local before
    step=1000
    agent_start a1
    for n in $(seq "$kills"); do
        before=$(stored "${A_ID[a1]}")
        wait_until "$step more events stored" 120 stored_at_least "${A_ID[a1]}" $((before + step))
        agent_stop a1 KILL
        say "agent killed (-9) with $(stored "${A_ID[a1]}") of $total stored, $(status a1 'd["queue_depth"]') queued"
        agent_start a1
    done
    finish
}

# Three agents with 10,000-event backlogs each; the collector killed with
# SIGKILL five times while they deliver, restarted on the same ports.
fault_kill-collector() {
    fresh kill-collector
    local per=10000 kills=5 step n name
    collector_init "$work/collector"
    collector_start
    for name in c1 c2 c3; do
        agent_new "$name" "batch_max_events = 20"
        fill "$name" "$per"
    done
    for name in c1 c2 c3; do agent_start "$name"; done
    step=1000
    total_stored() {
        local t=0 name
        for name in c1 c2 c3; do t=$((t + $(stored "${A_ID[$name]}"))); done
        echo "$t"
    }
    total_at_least() { (($(total_stored) >= $1)); }
    local before
    for n in $(seq "$kills"); do
        before=$(total_stored)
        wait_until "$step more events stored" 120 total_at_least $((before + step))
        collector_stop KILL
        say "collector killed (-9) with $(total_stored) of $((per * 3)) stored"
        collector_start
    done
    finish
}

tmpfs_mount() {
    mkdir -p "$1"
    mount -t tmpfs -o size=8m tmpfs "$1" || die "mounting a tmpfs on $1 needs root"
    mounts+=("$1")
}
fill_disk() { cat /dev/zero > "$1/filler" 2>/dev/null || true; }
writes_failing() { [[ $(status "$1" 'd["outbox_writes_failing_secs"]') != None ]]; }
# collector_refusing N: the collector has logged N storage errors.
collector_refusing() { (($(grep -c "storage error on telemetry stream" "$work/collector.log") >= $1)); }

# The agent's data directory, then (with a collector of its own) the
# collector's, on an 8 MiB tmpfs filled while a backlog is delivered, then
# freed.
fault_disk-full() {
    fresh disk-full
    collector_init "$work/collector"
    collector_start
    tmpfs_mount "$work/agent-tmpfs"
    agent_new d1 "batch_max_events = 20" "$work/agent-tmpfs/data"
    fill d1 10000
    # Full before the daemon starts: it cannot open its outbox (no room for
    # the write-ahead log), waits and retries, leaving the file alone.
    fill_disk "$work/agent-tmpfs"
    agent_start d1
    unavailable() { grep -q "outbox unavailable; its file is left as it is" "$work/agents/d1/agent.log"; }
    wait_until "the daemon to find its outbox unavailable" 60 unavailable
    local rc=0 out
    out=$(agent d1 status --format json 2>&1) || rc=$?
    say "agent's disk full at start: the daemon waits (running: $(kill -0 "${A_PID[d1]}" && echo yes)); status exit $rc: $(head -c 160 <<< "$out" | tr '\n' ' ')"
    rm "$work/agent-tmpfs/filler"
    wait_until "2,000 events stored" 120 stored_at_least "${A_ID[d1]}" 2000
    # Full while it runs: writes fail once the outbox needs room it does
    # not already hold (it may not, if its files already have the space).
    fill_disk "$work/agent-tmpfs"
    say "agent's disk full while running ($(df --output=avail -h "$work/agent-tmpfs" | tail -1 | tr -d ' ') free) with $(stored "${A_ID[d1]}") stored"
    failing_or_drained() { writes_failing d1 || queue_empty d1; }
    wait_until "outbox writes to fail or the backlog to drain" 120 failing_or_drained
    say "agent status: outbox_writes_failing_secs=$(status d1 'd["outbox_writes_failing_secs"]'), queue_depth=$(status d1 'd["queue_depth"]'), daemon running: $(kill -0 "${A_PID[d1]}" && echo yes)"
    rm "$work/agent-tmpfs/filler"
    say "agent's disk freed"
    finish

    say "-- the collector's data directory on an 8 MiB tmpfs"
    AGENTS=()
    tmpfs_mount "$work/collector-tmpfs"
    collector_init "$work/collector-tmpfs/data"
    : > "$work/collector.log"
    collector_start
    agent_new d2 "batch_max_events = 20"
    fill d2 6000
    agent_start d2
    wait_until "1,000 events stored" 120 stored_at_least "${A_ID[d2]}" 1000
    fill_disk "$work/collector-tmpfs"
    say "collector's disk full with $(stored "${A_ID[d2]}") stored"
    wait_until "the collector to refuse batches three times" 60 collector_refusing 3
    say "collector: $(grep -c 'storage error on telemetry stream' "$work/collector.log") storage errors logged; running: $(kill -0 "$C_PID" && echo yes); $(stored "${A_ID[d2]}") stored"
    rm "$work/collector-tmpfs/filler"
    say "collector's disk freed"
    finish
}

# scribble FILE: 16 bytes over the header and 512 random bytes into page 3.
scribble() {
    printf 'scribbled bytes!' | dd of="$1" bs=1 seek=0 conv=notrunc status=none
    head -c 512 /dev/urandom | dd of="$1" bs=1 seek=8192 conv=notrunc status=none
}

# The agent's outbox damaged while the agent is stopped with 1,000 unsent
# events: moved aside and reported; numbering continues above what the
# collector holds.
fault_damaged-outbox() {
    fresh damaged-outbox
    collector_init "$work/collector"
    collector_start
    agent_new o1
    fill o1 2000
    settle o1
    fill o1 1000
    local unsent
    unsent=$(status o1 'd["queue_depth"]')
    scribble "${A_DIR[o1]}/outbox.db"
    say "outbox.db scribbled with $unsent events unsent ($(ls "${A_DIR[o1]}" | tr '\n' ' '))"
    agent_start o1
    reported_corrupt() { [[ $(device_json "${A_ID[o1]}" | json 'd["device"]["outbox"]["corrupt_replacements"]') == 1 ]]; }
    wait_until "the collector to be told of the replacement" 60 reported_corrupt
    say "agent: $(grep -m1 'outbox corrupt' "$work/agents/o1/agent.log" | cut -c29-)"
    say "status corrupt_outbox_moved_to=$(status o1 'd["corrupt_outbox_moved_to"]'); devices show corrupt_replacements=1"
    fill_more() { stored_at_least "${A_ID[o1]}" $(($1 + 3)); }
    local s
    s=$(stored "${A_ID[o1]}")
    wait_until "new events stored after the replacement" 60 fill_more "$s"
    echo "o1: the $unsent events unsent in the damaged outbox stay in the moved-aside file (not delivered, by design); the counts below are the new outbox's"
    finish
}

# The collector's database damaged while it is stopped: serve refuses and
# says how to restore; restored from a backup taken before, the agents'
# backlog is delivered.
fault_damaged-database() {
    fresh damaged-database
    collector_init "$work/collector"
    collector_start
    agent_new b1
    agent_new b2
    fill b1 2000
    fill b2 2000
    settle b1
    settle b2
    "$bin/hallmonitor-collector" --data "$C_DIR" backup --to "$work/backup.db"
    say "backup taken with $(stored "${A_ID[b1]}") + $(stored "${A_ID[b2]}") stored (agents stopped, so nothing is acknowledged after it)"
    fill b1 3000
    fill b2 3000
    collector_stop TERM
    # The collector leaves its write-ahead log behind, and SQLite reads the
    # newest pages from it, so bytes scribbled into collector.db alone may
    # never be read. Fold the log in first (as a clean SQLite close does),
    # so the damage lands in the file that is read.
    say "after SIGTERM: $(cd "$C_DIR" && ls collector.db* | tr '\n' ' '); checkpoint: $(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone())" "$C_DIR/collector.db")"
    scribble "$C_DIR/collector.db"
    local rc=0
    "$bin/hallmonitor-collector" --data "$C_DIR" check-database > "$work/check.txt" 2>&1 || rc=$?
    say "check-database exit $rc: $(head -1 "$work/check.txt")"
    rc=0
    HALLMONITOR_LOG=warn timeout 60 "$bin/hallmonitor-collector" --data "$C_DIR" serve \
        --listen "127.0.0.1:$TELEMETRY_PORT" --enroll-listen "127.0.0.1:$ENROLL_PORT" --api-listen 127.0.0.1:0 \
        > "$work/refused.out" 2>&1 || rc=$?
    ((rc != 0 && rc != 124)) || die "serve started on a damaged database (exit $rc)"
    say "serve exit $rc:"
    sed 's/^/    /' "$work/refused.out" | tail -8
    mkdir "$work/damaged"
    mv "$C_DIR"/collector.db* "$work/damaged/"
    cp "$work/backup.db" "$C_DIR/collector.db"
    say "restored the backup (damaged files moved aside: $(ls "$work/damaged" | tr '\n' ' '))"
    collector_start
    finish
}

# ~1,500 idle TCP connections to the telemetry port of a collector whose
# descriptor limit is 1,024 (its telemetry cap is then 512), reopened as
# the collector closes them (an attacker would): two agents must still
# connect and deliver while the flood lasts. The port takes its 512 and the
# kernel's accept queue the next ones; further connects time out.
fault_descriptors() {
    fresh descriptors
    collector_init "$work/collector"
    COLLECTOR_NOFILE=1024 collector_start
    say "collector: $(grep -m1 'connection limits' "$work/collector.log" | sed 's/.*connection limits/connection limits/')"
    agent_new f1
    agent_new f2
    fill f1 3000
    fill f2 3000
    python3 - "$TELEMETRY_PORT" 1500 "$work/flood" <<'EOF' &
import select, socket, sys, time, os
port, want, state = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held, opened, closed_by_peer, timed_out = [], 0, 0, 0
while not os.path.exists(state + ".stop"):
    # Keep `want` idle connections open: reopen what the collector closes.
    while len(held) < want:
        s = socket.socket()
        s.settimeout(0.3)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            # The collector stopped accepting and the kernel's queue is full.
            timed_out += 1
            s.close()
            break
        s.setblocking(False)
        held.append(s)
        opened += 1
    readable, _, _ = select.select(held, [], [], 0.2)
    for s in readable:
        try:
            data = s.recv(1024)
        except OSError:
            data = b""
        if not data:
            held.remove(s)
            s.close()
            closed_by_peer += 1
    with open(state + ".tmp", "w") as f:
        f.write(f"held={len(held)} opened={opened} closed_by_collector={closed_by_peer} connects_timed_out={timed_out}\n")
    os.replace(state + ".tmp", state)
for s in held:
    s.close()
EOF
    pids+=("$!")
    local flood=$!
    # 1,500 held, or as many as the port takes: the collector's slots and
    # the kernel's accept queue full, further connects timing out.
    flooded() {
        [[ -f $work/flood ]] || return 1
        local held timed_out
        held=$(sed 's/held=\([0-9]*\).*/\1/' "$work/flood")
        timed_out=$(sed 's/.*connects_timed_out=\([0-9]*\).*/\1/' "$work/flood")
        ((held >= 1500 || (held >= 512 && timed_out > 0)))
    }
    wait_until "1,500 idle connections, or the port saturated" 90 flooded
    say "flood: $(cat "$work/flood"); collector descriptors: $(ls "/proc/$C_PID/fd" | wc -l)"
    local started=$SECONDS
    agent_start f1
    agent_start f2
    wait_until "f1 to connect during the flood" 180 connected f1
    wait_until "f2 to connect during the flood" 180 connected f2
    say "both agents connected $((SECONDS - started)) s after starting (each failed attempt waits out a 10 s deadline): $(grep -c 'deadline has elapsed' "$work/agents/f1/agent.log") + $(grep -c 'deadline has elapsed' "$work/agents/f2/agent.log") attempts timed out"
    wait_until "f1 to deliver its backlog during the flood" 180 queue_empty f1
    wait_until "f2 to deliver its backlog during the flood" 180 queue_empty f2
    say "both backlogs delivered during the flood: $(cat "$work/flood"); collector descriptors: $(ls "/proc/$C_PID/fd" | wc -l)"
    touch "$work/flood.stop"
    wait "$flood" || true
    say "flood closed; collector descriptors: $(ls "/proc/$C_PID/fd" | wc -l)"
    finish
}

# A lost ack: the agent frozen (SIGSTOP) with batches in flight, the
# collector killed (-9) after committing them, restarted, the agent thawed:
# it resends what it holds and the collector recognises the duplicates.
fault_lost-ack() {
    fresh lost-ack
    local rounds=3 n before
    collector_init "$work/collector"
    collector_start
    agent_new l1 "batch_max_events = 20"
    fill l1 15000
    agent_start l1
    for n in $(seq "$rounds"); do
        before=$(stored "${A_ID[l1]}")
        wait_until "more events stored" 120 stored_at_least "${A_ID[l1]}" $((before + 2000))
        kill -STOP "${A_PID[l1]}"
        # Let the collector commit (and ack into the socket) what is in flight.
        sleep 0.5
        collector_stop KILL
        say "agent frozen, collector killed (-9) with $(stored "${A_ID[l1]}") stored, $(status l1 'd["queue_depth"]') still in the agent's outbox"
        collector_start
        kill -CONT "${A_PID[l1]}"
    done
    finish
}

# A device clock far ahead needs libfaketime; without it the check is
# covered by a unit test only (agent/src/tls.rs).
fault_clock() {
    say "== clock"
    if ! command -v faketime > /dev/null; then
        echo "clock: SKIPPED: faketime is not installed (Debian: apt-get install faketime). A device clock outside the"
        echo "       certificates' validity is covered only by the agent's unit test"
        echo "       tls::tests::a_clock_outside_the_certificates_validity_is_named (cargo test -p hallmonitor-agent); no counts."
        return 0
    fi
    fresh clock
    collector_init "$work/collector"
    collector_start
    agent_new k1
    fill k1 500
    AGENT_WRAPPER="faketime -f +3650d" agent_start k1
    clock_wrong() { [[ $(status k1 'd["connection"]') == clock_wrong ]]; }
    wait_until "status to say clock_wrong" 60 clock_wrong
    say "agent 10 years ahead: connection=clock_wrong, last_error=$(status k1 'd["last_error"]'), queue_depth=$(status k1 'd["queue_depth"]')"
    agent_stop k1
    finish
}

all=(kill-agent kill-collector disk-full damaged-outbox damaged-database descriptors lost-ack clock)
what=("$@")
((${#what[@]})) || {
    echo "usage: bash benches/faults.sh NAME... (${all[*]} all)" >&2
    exit 2
}
[[ ${what[*]} == all ]] && what=("${all[@]}")
echo "machine: $(nproc) cores, $(uname -sr); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
for w in "${what[@]}"; do
    declare -F "fault_$w" > /dev/null || die "no fault named $w (${all[*]} all)"
    "fault_$w"
done
exit "$failed"
