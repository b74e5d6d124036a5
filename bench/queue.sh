#!/usr/bin/env bash
# Queue at scale (issue 11): memory and start-up time of mxguard with a large deferred queue.
#
# Usage:  bench/queue.sh [-n "SIZES"] [-s SESSIONS] [-l BYTES] [-t TIMEOUT_S]
#           -n  queue sizes, one run each (default "30000 100000 300000"; -n 2000 for a smoke run)
#           -s  parallel SMTP sessions of smtp-source (default 10)
#           -l  message payload size in bytes (default 5120)
#           -t  seconds each wait may take (all first attempts logged; the end of the spool
#               scan; the retry pass), default 120 + N/50
#         MXGUARD_BIN=path  use this binary instead of `cargo build --release`
#         IOP_KEEP=1        keep the temporary directory (configs, logs, spools)
#
# What it does for each size N, all on 127.0.0.1:
#   mxguard (release build, info logging to a file) routes "*" to [127.0.0.1]:PORT where nothing
#   listens: every attempt is refused, hence deferred, and with min_backoff = 1h nothing is due
#   again for an hour;
#   1. acceptance: smtp-source -s 10 -m N -l 5120 pushes N messages; we wait until mxguard has
#      logged N `status=deferred` lines (the first attempt of each). Peak RSS of this phase;
#   2. restart: SIGTERM, wait for the exit, start again on the same data_dir. Time to listen
#      (process start until the SMTP port accepts a TCP connection, tight loop), peak RSS in the
#      first 30 s (spool scan included), delivery attempts logged in the first 10 s (should be
#      0: every persisted next-attempt time is an hour away), and the spool scan time when
#      mxguard logs "queue: spool scan done: … in X.XXs";
#   3. retry pass: `mxguard queue flush --all`, then until N more `status=deferred` lines are
#      logged: its time and peak RSS. "n/a" when the binary has no `queue flush` verb.
# Peak RSS is shown as VmHWM (/proc/PID/status; reset with clear_refs before the retry pass)
# and the largest VmRSS sampled every 0.5 s during the phase.
#
# Both ports are taken below the ephemeral port range (a loopback connect to an unused port
# inside it may connect to itself). The binary is copied first, so that a rebuild in target/
# during the run changes nothing. The data_dir is in ${TMPDIR:-/tmp}; the header says whether
# that is /tmp's file system. Spools are removed after each size (IOP_KEEP=1 keeps them).
#
# Needs: postfix (smtp-source; installed as tests/run.sh does when run as root), disk space
# for N messages (about 16 KB each with their state files) in ${TMPDIR:-/tmp}.
set -euo pipefail

# shellcheck source=tests/interop/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tests/interop/lib.sh"

SIZES="30000 100000 300000"
SESSIONS=10
SIZE=5120
TIMEOUT=""
while getopts "n:s:l:t:h" opt; do
    case "$opt" in
    n) SIZES=$OPTARG ;;
    s) SESSIONS=$OPTARG ;;
    l) SIZE=$OPTARG ;;
    t) TIMEOUT=$OPTARG ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d'
        exit 2
        ;;
    esac
done
read -r -a SIZE_LIST <<<"$SIZES"
[[ ${#SIZE_LIST[@]} -gt 0 ]] || iop_die "-n needs at least one queue size"
for n in "${SIZE_LIST[@]}"; do
    [[ "$n" =~ ^[0-9]+$ && "$n" -gt 0 ]] || iop_die "-n: $n is not a positive number"
done
for v in "$SESSIONS" "$SIZE" ${TIMEOUT:+"$TIMEOUT"}; do
    [[ "$v" =~ ^[0-9]+$ && "$v" -gt 0 ]] || iop_die "-s, -l and -t need positive numbers"
done

# ----- helpers --------------------------------------------------------------------------------

# Spool directories of this run: removed at exit, even after a failure, unless IOP_KEEP=1 (the
# logs stay with iop_cleanup's rules: kept when the run failed).
SPOOLS=()
bench_cleanup() {
    local rc=$? pid i dir
    trap - EXIT
    for ((i = ${#IOP_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${IOP_PIDS[$i]}
        [[ -n "$pid" ]] && iop_stop_pid "$pid"
    done
    IOP_PIDS=()
    if [[ "${IOP_KEEP:-}" != 1 && ${#SPOOLS[@]} -gt 0 ]]; then
        for dir in "${SPOOLS[@]}"; do rm -rf "$dir"; done
        [[ $rc -eq 0 ]] || iop_log "spools removed (IOP_KEEP=1 keeps them); logs and configs stay"
    fi
    if [[ $rc -eq 0 ]]; then
        iop_cleanup
    else
        return_rc "$rc" || iop_cleanup
    fi
}
return_rc() { return "$1"; }

# Drops PID from the list iop_cleanup stops (it has exited and been waited for: its number may
# be reused by some other process).
forget_pid() {
    local pid=$1 i
    for i in "${!IOP_PIDS[@]}"; do
        [[ "${IOP_PIDS[$i]}" == "$pid" ]] && unset 'IOP_PIDS[i]'
    done
    IOP_PIDS=("${IOP_PIDS[@]}")
}

# Microseconds since the epoch, into the variable named $1 (no fork).
now_us() { printf -v "$1" '%s' "${EPOCHREALTIME//[!0-9]/}"; }
# us_secs MICROSECONDS: "12.34"
us_secs() { printf '%d.%02d' $(($1 / 1000000)) $(($1 % 1000000 / 10000)); }
# kb_mb KB: "123.4"
kb_mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# status_kb PID FIELD: FIELD (VmHWM, VmRSS) of /proc/PID/status in kB, 0 when unreadable.
status_kb() {
    local k v _
    while read -r k v _; do
        if [[ "$k" == "$2:" ]]; then
            echo "$v"
            return 0
        fi
    done 2>/dev/null <"/proc/$1/status" || true
    echo 0
}

# sampler_start PID FILE: appends VmRSS (kB) of PID to FILE every 0.5 s. Sets SAMPLER.
sampler_start() {
    local pid=$1 out=$2
    : >"$out"
    (
        while [[ -e "/proc/$pid/status" ]]; do
            status_kb "$pid" VmRSS >>"$out"
            sleep 0.5
        done
    ) &
    SAMPLER=$!
    IOP_PIDS+=("$SAMPLER")
}
# sampler_stop FILE VAR: stops SAMPLER, sets VAR to the largest sample of FILE (kB).
sampler_stop() {
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    forget_pid "$SAMPLER"
    printf -v "$2" '%s' "$(awk '$1 > max { max = $1 } END { print max + 0 }' "$1")"
}

# deferred_count LOG: delivery log lines with status=deferred.
deferred_count() { grep -c -F ', status=deferred (' "$1" 2>/dev/null || true; }

# wait_deferred LOG TARGET PID WHAT: until LOG has TARGET deferrals; fails when PID exits or
# WAIT_S seconds pass. Sets DONE_US (when the count was seen).
wait_deferred() {
    local log=$1 target=$2 pid=$3 what=$4 start now got=0
    now_us start
    while :; do
        got=$(deferred_count "$log")
        now_us now
        if [[ $got -ge $target ]]; then
            DONE_US=$now
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || {
            tail -n 20 "$log" >&2
            iop_die "$what: mxguard exited after $got of $target deferrals"
        }
        [[ $((now - start)) -lt $((WAIT_S * 1000000)) ]] ||
            iop_die "$what: $got of $target deferrals logged in ${WAIT_S}s (log: $log)"
        sleep 0.25
    done
}

# scan_secs LOG: X.XX of the last "queue: spool scan done: …, in X.XXs" line, or nothing.
scan_secs() {
    { grep -F 'spool scan done' "$1" || true; } | tail -n 1 | sed -n 's/.* in \([0-9.]*\)s.*/\1/p'
}

# mx_start CONFIG PORT LOG: starts `mxguard serve`, polls PORT in a tight loop until it accepts
# a TCP connection. Sets MX_PID, START_US (just before the fork) and LISTEN_US.
mx_start() {
    local config=$1 port=$2 log=$3 up i=0
    now_us START_US
    "$MXGUARD_BIN" serve --config "$config" >"$log" 2>&1 &
    MX_PID=$!
    IOP_PIDS+=("$MX_PID")
    # A redirection on `:` opens and closes the connection without a fork.
    until : 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$port"; do
        if ((++i % 500 == 0)); then
            kill -0 "$MX_PID" 2>/dev/null || {
                tail -n 30 "$log" >&2
                iop_die "mxguard exited before listening on $port"
            }
            now_us up
            [[ $((up - START_US)) -lt 60000000 ]] || iop_die "mxguard did not listen within 60 s"
        fi
    done
    now_us up
    LISTEN_US=$((up - START_US))
}

# mx_stop: SIGTERM, waits (up to 10 min) for the exit. Sets STOP_US.
mx_stop() {
    local t0 t1 n rc=0
    now_us t0
    kill -TERM "$MX_PID" 2>/dev/null || true
    for ((n = 0; n < 6000; n++)); do
        kill -0 "$MX_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$MX_PID" 2>/dev/null; then
        iop_log "mxguard $MX_PID did not exit 10 min after SIGTERM; killing it"
        kill -KILL "$MX_PID" 2>/dev/null || true
    fi
    wait "$MX_PID" 2>/dev/null || rc=$?
    now_us t1
    forget_pid "$MX_PID"
    STOP_US=$((t1 - t0))
    [[ $rc -eq 0 ]] || iop_log "mxguard exited with status $rc after SIGTERM"
}

# quiet_port VAR: a free port below the ephemeral range, into VAR. Both ports of a run must be
# outside it: a connect to an unused loopback port inside it can pick that same port as its
# source and connect to itself, which would fake "listening" in the tight loop (and take the
# port from mxguard) or make the dead next hop answer.
quiet_port() {
    local low _ port n
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range
    [[ $low -gt 11000 ]] || iop_die "ephemeral ports start at $low: no room below them"
    for ((n = 0; n < 200; n++)); do
        port=$((10000 + RANDOM % (low - 10000)))
        [[ "$IOP_PORTS_TAKEN" == *" $port "* ]] && continue
        iop_port_open "$port" && continue
        IOP_PORTS_TAKEN+="$port "
        printf -v "$1" '%s' "$port"
        return 0
    done
    iop_die "no free port found below $low"
}

# sleep_until US: sleeps until that time (microseconds since the epoch), if it is ahead.
sleep_until() {
    local now
    now_us now
    if [[ $1 -gt $now ]]; then
        sleep "$(us_secs $(($1 - now)))"
    fi
}

# The delivery log line is what we count: info level, whatever the caller's environment says.
unset RUST_LOG

iop_require postfix:smtp-source
iop_init
trap bench_cleanup EXIT

if [[ -z "${MXGUARD_BIN:-}" ]]; then
    iop_log "cargo build --release --bin mxguard"
    (cd "$IOP_ROOT" && cargo build --release --quiet --bin mxguard) || iop_die "build failed"
    MXGUARD_BIN="${CARGO_TARGET_DIR:-$IOP_ROOT/target}/release/mxguard"
    BUILT_FROM="release build of $(git -C "$IOP_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    if [[ -n "$(git -C "$IOP_ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
        BUILT_FROM+=" + uncommitted changes"
    fi
else
    BUILT_FROM="MXGUARD_BIN=$MXGUARD_BIN"
fi
[[ -x "$MXGUARD_BIN" ]] || iop_die "no mxguard binary at $MXGUARD_BIN"
# A private copy: a rebuild in target/ during the run must not change the binary under test
# (the restart runs the same one).
cp "$MXGUARD_BIN" "$IOP_TMP/mxguard"
MXGUARD_BIN="$IOP_TMP/mxguard"

if "$MXGUARD_BIN" queue flush --help >/dev/null 2>&1; then
    HAVE_FLUSH=1
else
    HAVE_FLUSH=0
    iop_log "this mxguard has no \`queue flush\` verb: the retry pass is skipped (n/a)"
fi

# ----- the runs -------------------------------------------------------------------------------

ROWS=()
FS_NOTE=""
max_n=0
for n in "${SIZE_LIST[@]}"; do [[ $n -gt $max_n ]] && max_n=$n; done
need_kb=$((max_n * 16 + 100 * 1024 + 100 * 1024))
avail_kb=$(df -Pk "$IOP_TMP" | awk 'NR == 2 { print $4 }')
[[ $avail_kb -ge $need_kb ]] ||
    iop_die "$IOP_TMP: $((avail_kb / 1024)) MB free, a queue of $max_n needs about $((need_kb / 1024)) MB"
if [[ "$(stat -c %d "$IOP_TMP")" == "$(stat -c %d /tmp)" ]]; then
    FS_NOTE="the file system of /tmp"
else
    FS_NOTE="NOT the file system of /tmp"
fi
FS_NOTE+=": $(df -PT "$IOP_TMP" | awk 'NR == 2 { print $2 " on " $1 }')"

for N in "${SIZE_LIST[@]}"; do
    RUN="$IOP_TMP/n$N"
    DATA="$RUN/var"
    mkdir -p "$DATA"
    SPOOLS+=("$DATA")
    quiet_port MX_PORT
    quiet_port DEAD_PORT
    CONFIG="$RUN/mxguard.toml"
    cat >"$CONFIG" <<EOF
hostname = "mxguard.bench.test"
data_dir = "$DATA"

[[listener]]
address = "127.0.0.1:$MX_PORT"

[[route]]
domain = "*"
next_hop = "[127.0.0.1]:$DEAD_PORT"

[queue]
min_backoff = "1h"
max_backoff = "4h"

[dns]
dnssec = "off"

[mta_sts]
enabled = false
EOF
    "$MXGUARD_BIN" check-config --config "$CONFIG" >/dev/null || iop_die "mxguard rejects $CONFIG"
    WAIT_S=${TIMEOUT:-$((120 + N / 50))}

    # ----- 1. acceptance ----------------------------------------------------------------------
    LOG1="$RUN/mxguard-1.log"
    mx_start "$CONFIG" "$MX_PORT" "$LOG1"
    sampler_start "$MX_PID" "$RUN/rss-accept"
    iop_log "n=$N: mxguard listening after $((LISTEN_US / 1000)) ms (empty spool);" \
        "smtp-source -s $SESSIONS -m $N -l $SIZE → 127.0.0.1:$MX_PORT"
    now_us A0
    smtp-source -s "$SESSIONS" -m "$N" -l "$SIZE" -f sender@bench.test -t rcpt@dest.test \
        "127.0.0.1:$MX_PORT" >"$RUN/source.log" 2>&1 || {
        tail -n 5 "$RUN/source.log" >&2
        iop_die "n=$N: smtp-source failed"
    }
    now_us A1
    ACCEPT_US=$((A1 - A0))
    iop_log "n=$N: accepted in $(us_secs "$ACCEPT_US")s; waiting for $N first attempts"
    wait_deferred "$LOG1" "$N" "$MX_PID" "n=$N acceptance"
    sampler_stop "$RUN/rss-accept" A_SMP
    A_HWM=$(status_kb "$MX_PID" VmHWM)
    iop_log "n=$N: $N first attempts logged $(us_secs $((DONE_US - A0)))s after the first message"
    mx_stop
    iop_log "n=$N: stopped on SIGTERM in $(us_secs "$STOP_US")s; restarting on the same data_dir"

    # ----- 2. restart -------------------------------------------------------------------------
    LOG2="$RUN/mxguard-2.log"
    mx_start "$CONFIG" "$MX_PORT" "$LOG2"
    sampler_start "$MX_PID" "$RUN/rss-restart"
    R_LISTEN_MS=$(awk -v u="$LISTEN_US" 'BEGIN { printf "%.1f", u / 1000 }')
    sleep_until $((START_US + 10000000))
    R_ATTEMPTS=$(deferred_count "$LOG2")
    sleep_until $((START_US + 30000000))
    kill -0 "$MX_PID" 2>/dev/null || {
        tail -n 30 "$LOG2" >&2
        iop_die "n=$N: mxguard exited after the restart"
    }
    sampler_stop "$RUN/rss-restart" R_SMP
    R_HWM=$(status_kb "$MX_PID" VmHWM)
    iop_log "n=$N: listening ${R_LISTEN_MS} ms after the restart; $R_ATTEMPTS attempts in 10 s"

    # The scan's own time, when this mxguard logs it; a binary with `queue flush` has the
    # background scan: the retry pass waits for its end.
    R_SCAN=$(scan_secs "$LOG2")
    if [[ $HAVE_FLUSH -eq 1 && -z "$R_SCAN" ]]; then
        iop_log "n=$N: waiting for the end of the spool scan"
        for ((i = 0; i < WAIT_S * 5; i++)); do
            R_SCAN=$(scan_secs "$LOG2")
            [[ -n "$R_SCAN" ]] && break
            sleep 0.2
        done
        [[ -n "$R_SCAN" ]] || iop_log "n=$N: no \"spool scan done\" line after ${WAIT_S}s more"
    fi
    R_SCAN=${R_SCAN:-n/a}

    # ----- 3. retry pass ----------------------------------------------------------------------
    F_TIME="n/a"
    F_RSS="n/a"
    if [[ $HAVE_FLUSH -eq 1 ]]; then
        BASE=$(deferred_count "$LOG2")
        # Resets VmHWM to the current RSS (proc(5), clear_refs "5").
        HWM_RESET=1
        echo 5 2>/dev/null >"/proc/$MX_PID/clear_refs" || HWM_RESET=0
        sampler_start "$MX_PID" "$RUN/rss-flush"
        iop_log "n=$N: mxguard queue flush --all"
        now_us F0
        if "$MXGUARD_BIN" queue flush --all --config "$CONFIG" >"$RUN/flush.out" 2>&1; then
            wait_deferred "$LOG2" $((BASE + N)) "$MX_PID" "n=$N retry pass"
            sampler_stop "$RUN/rss-flush" F_SMP
            F_HWM=$(status_kb "$MX_PID" VmHWM)
            F_TIME=$(us_secs $((DONE_US - F0)))
            if [[ $HWM_RESET -eq 1 ]]; then
                F_RSS="$(kb_mb "$F_HWM")/$(kb_mb "$F_SMP")"
            else
                F_RSS="-/$(kb_mb "$F_SMP")"
            fi
            iop_log "n=$N: retry pass of $N messages in ${F_TIME}s"
        else
            sampler_stop "$RUN/rss-flush" F_SMP
            tail -n 5 "$RUN/flush.out" >&2
            iop_log "n=$N: mxguard queue flush --all failed"
            F_TIME="failed"
            F_RSS="failed"
        fi
    fi
    mx_stop

    SPOOL_MB=$(du -sk "$DATA" | awk '{ printf "%.0f", $1 / 1024 }')
    iop_log "n=$N: spool $SPOOL_MB MB on disk"
    if [[ "${IOP_KEEP:-}" != 1 ]]; then rm -rf "$DATA"; fi

    ROWS+=("$(printf '%8s | %7s %6s %13s | %9s %6s %13s %4s | %7s %13s' \
        "$N" "$(us_secs "$ACCEPT_US")" \
        "$(awk -v n="$N" -v u="$ACCEPT_US" 'BEGIN { printf "%.0f", (u > 0 ? n * 1e6 / u : 0) }')" \
        "$(kb_mb "$A_HWM")/$(kb_mb "$A_SMP")" \
        "$R_LISTEN_MS" "$R_SCAN" "$(kb_mb "$R_HWM")/$(kb_mb "$R_SMP")" "$R_ATTEMPTS" \
        "$F_TIME" "$F_RSS")")
    iop_log "n=$N: ${ROWS[-1]}"
done

# ----- results --------------------------------------------------------------------------------
echo
echo "queue-at-scale benchmark: messages of $SIZE bytes, $SESSIONS sessions, $(nproc) CPUs"
echo "  mxguard: $BUILT_FROM"
echo "  info logging to a file; the next hop refuses connections (every attempt is deferred);"
echo "  min_backoff 1h, max_backoff 4h, queue.active_limit default"
echo "  data_dir: a temporary directory on $FS_NOTE"
echo "  RSS in MB: VmHWM / largest VmRSS sampled every 0.5 s. Acceptance: from start until every"
echo "  first attempt is logged. Restart: first 30 s (spool scan included), listen = process"
echo "  start to TCP accept, att = attempts logged in the first 10 s (expected 0), scan = the"
echo "  spool scan's own time. Retry: queue flush --all until N more attempts are logged."
echo
printf '%8s | %-28s | %-35s | %s\n' "" "acceptance" "restart (first 30 s)" "retry pass"
printf '%8s | %7s %6s %13s | %9s %6s %13s %4s | %7s %13s\n' \
    "N" "time s" "msg/s" "RSS MB" "listen ms" "scan s" "RSS MB" "att" "time s" "RSS MB"
for row in "${ROWS[@]}"; do
    echo "$row"
done
