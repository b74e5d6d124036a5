#!/usr/bin/env bash
# Relay throughput: mxguard against Postfix, same load, same sink, one run.
#
# Usage:  bench/relay.sh [-m MESSAGES] [-s SESSIONS] [-l BYTES] [-t TIMEOUT_S] [-P]
#           -m  messages to push (default 20000)
#           -s  parallel SMTP sessions of smtp-source (default 10)
#           -l  message payload size in bytes (default 5120)
#           -t  seconds to wait for the sink to count every message, per relay
#               (default 120 + MESSAGES/50)
#           -P  skip the Postfix comparison
#           -M  skip mxguard (Postfix alone, e.g. to calibrate a machine)
#         MXGUARD_BIN=path  use this binary instead of `cargo build --release`
#         IOP_KEEP=1        keep the temporary directory (configs, logs, spools)
#         MXGUARD_TOML=text appended to mxguard's configuration, e.g. "[tlsrpt]
#                           enabled = true" to measure with TLS-RPT counting on
#
# What it does, all on 127.0.0.1:
#   smtp-sink -c (counting, discarding) plays every MX;
#   phase 1: smtp-source -s 10 -m 20000 -l 5120 ──▶ mxguard (127.0.0.1:10025, or a free port if
#            that one is taken; release build; [[route]] "*" → [127.0.0.1]:SINK) ──▶ sink;
#   phase 2: the same load ──▶ a private Postfix (relayhost = [127.0.0.1]:SINK, default
#            concurrency settings, own queue in the temporary directory) ──▶ the same sink.
# Both relays log as they would in production, because the per-message compliance line is part
# of the job: mxguard at its default level (info, whatever RUST_LOG says in the caller's
# environment: the delivery log line of every recipient) to mxguard.log in the temporary
# directory; Postfix to its maillog (maillog_file, written by postlogd, Postfix >= 3.4).
# A phase's time runs from the first message sent until the sink has counted all of them
# (end to end: accepted, queued durably, delivered); it fails if the count is not reached in
# time. Prints both rates in messages per second, their ratio, mxguard's peak RSS (VmHWM from
# /proc/PID/status, read just before it is stopped), the delivery log lines each relay wrote,
# and the TCP connections each relay opened to the sink per 1,000 messages.
#
# Counting connections: smtp-sink -c counts every session it has ended ("sess=", incremented
# at disconnect). After a phase the relay's open connections are let go (mxguard is stopped;
# Postfix closes its cached ones after smtp_connection_cache_time_limit, 2 s), the script waits
# until the sink holds no connection (ss), and the difference in sess= over the phase is the
# number of TCP connections that relay opened to the sink: each counted once, open or reused.
#
# Needs: root (smtp-sink drops to nobody; Postfix instance), postfix (smtp-source, smtp-sink),
# ss (iproute2). Both relays write their queues on the same file system (the temporary
# directory), so the comparison is fair for fsync costs; run it on an otherwise idle machine.
set -euo pipefail

# shellcheck source=tests/interop/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tests/interop/lib.sh"

MESSAGES=20000
SESSIONS=10
SIZE=5120
TIMEOUT=""
WITH_POSTFIX=1
WITH_MXGUARD=1
while getopts "m:s:l:t:PMh" opt; do
    case "$opt" in
    m) MESSAGES=$OPTARG ;;
    s) SESSIONS=$OPTARG ;;
    l) SIZE=$OPTARG ;;
    t) TIMEOUT=$OPTARG ;;
    P) WITH_POSTFIX=0 ;;
    M) WITH_MXGUARD=0 ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d'
        exit 2
        ;;
    esac
done
[[ "$MESSAGES" =~ ^[0-9]+$ && "$MESSAGES" -gt 0 ]] || iop_die "-m needs a positive number"
TIMEOUT=${TIMEOUT:-$((120 + MESSAGES / 50))}

for tool in smtp-source smtp-sink postfix ss; do
    command -v "$tool" >/dev/null || iop_die "$tool is not installed (apt-get install postfix)"
done
iop_is_root || iop_die "run as root (smtp-sink and the private Postfix instance need it)"

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_start

SINK_PORT=$(iop_free_port)
if iop_port_open 10025; then
    MX_PORT=$(iop_free_port)
    iop_log "127.0.0.1:10025 is taken; mxguard listens on $MX_PORT instead"
else
    MX_PORT=10025
    IOP_PORTS_TAKEN+="10025 "
fi
PF_PORT=$(iop_free_port)

SINK_LOG="$IOP_TMP/sink.log"
# shellcheck disable=SC2046
iop_start sink smtp-sink $(iop_sink_user_args) -4 -c -h sink.test "127.0.0.1:$SINK_PORT" 1024
SINK_PID=$IOP_PID
iop_wait_port "$SINK_PORT" 10 "$SINK_PID" || iop_die "smtp-sink did not start"

# Messages the sink has counted so far, and the sessions it has ended.
sink_count() { iop_sink_counter "$SINK_LOG" mesg; }
sink_sessions() { iop_sink_counter "$SINK_LOG" sess; }

# settle LABEL: waits until the sink holds no connection, then prints its session count.
settle() {
    iop_wait_port_idle "$SINK_PORT" 30 || iop_die "$1: connections to the sink still open"
    sink_sessions
}


# ----- phase 1: mxguard -----------------------------------------------------------------------
MX_ELAPSED=""
if [[ $WITH_MXGUARD -eq 1 ]]; then
    mkdir -p "$IOP_TMP/mxguard-var"
    cat >"$IOP_TMP/mxguard.toml" <<EOF
hostname = "mxguard.bench.test"
data_dir = "$IOP_TMP/mxguard-var"

[[listener]]
address = "127.0.0.1:$MX_PORT"

[[route]]
domain = "*"
next_hop = "[127.0.0.1]:$SINK_PORT"
EOF
    if [[ -n "${MXGUARD_TOML:-}" ]]; then
        printf '\n%s\n' "$MXGUARD_TOML" >>"$IOP_TMP/mxguard.toml"
    fi
    SESS_BASE=$(settle mxguard)
    iop_mxguard_start "$IOP_TMP/mxguard.toml" "$MX_PORT"
    push "$MX_PORT" mxguard
    MX_ELAPSED=$ELAPSED
    MX_ACCEPTED=$ACCEPTED
    MX_RSS_KB=$(awk '/^VmHWM:/ { print $2 }' "/proc/$MXGUARD_PID/status" 2>/dev/null || echo 0)
    iop_stop_pid "$MXGUARD_PID"
    MX_CONNS=$(($(settle mxguard) - SESS_BASE))
    MX_LOGGED=$(grep -c ', status=sent (' "$MXGUARD_LOG" || true)
    [[ $MX_LOGGED -ge $MESSAGES ]] ||
        iop_die "mxguard: $MX_LOGGED delivery log lines with status=sent for $MESSAGES messages"
fi

# ----- phase 2: Postfix -----------------------------------------------------------------------
PF_ELAPSED=""
if [[ $WITH_POSTFIX -eq 1 ]]; then
    iop_postfix_start "$IOP_TMP/postfix" "$PF_PORT" "[127.0.0.1]:$SINK_PORT"
    SESS_BASE=$(settle postfix)
    push "$PF_PORT" postfix
    PF_ELAPSED=$ELAPSED
    PF_ACCEPTED=$ACCEPTED
    iop_wait_for 30 iop_postfix_queue_empty "$IOP_TMP/postfix" || iop_log "postfix queue not empty yet"
    PF_CONNS=$(($(settle postfix) - SESS_BASE))
    # postlogd writes the maillog asynchronously: give it a moment to catch up.
    pf_logged() { grep -c "relay=127.0.0.1\[127.0.0.1\]:$SINK_PORT, .*status=sent" \
        "$IOP_TMP/postfix/maillog" || true; }
    pf_all_logged() { [[ $(pf_logged) -ge $MESSAGES ]]; }
    iop_wait_for 10 pf_all_logged || true
    PF_LOGGED=$(pf_logged)
fi

# ----- results --------------------------------------------------------------------------------
echo
echo "relay benchmark: $MESSAGES messages of $SIZE bytes, $SESSIONS sessions, $(nproc) CPUs"
if [[ -n "$MX_ELAPSED" ]]; then
    printf '  mxguard: %6s msg/s  (%ss end to end; accepted in %ss)  peak RSS %s MB\n' \
        "$(rate "$MESSAGES" "$MX_ELAPSED")" "$MX_ELAPSED" "$MX_ACCEPTED" \
        "$(awk -v k="$MX_RSS_KB" 'BEGIN { printf "%.1f", k / 1024 }')"
    printf '           %s TCP connections to the sink per 1,000 messages (%s); %s delivery log lines\n' \
        "$(per_k "$MX_CONNS")" "$MX_CONNS" "$MX_LOGGED"
fi
if [[ -n "$PF_ELAPSED" ]]; then
    printf '  postfix: %6s msg/s  (%ss end to end; accepted in %ss)\n' \
        "$(rate "$MESSAGES" "$PF_ELAPSED")" "$PF_ELAPSED" "$PF_ACCEPTED"
    printf '           %s TCP connections to the sink per 1,000 messages (%s); %s maillog status=sent lines\n' \
        "$(per_k "$PF_CONNS")" "$PF_CONNS" "$PF_LOGGED"
fi
if [[ -n "$MX_ELAPSED" && -n "$PF_ELAPSED" ]]; then
    printf '  ratio mxguard/postfix: %s\n' \
        "$(awk -v a="$PF_ELAPSED" -v b="$MX_ELAPSED" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
fi
