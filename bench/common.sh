# Shared by bench/relay.sh and bench/relay_tls.sh: the set-up, timing, rates, and one phase's
# push of the load through a relay. Expects MESSAGES, SESSIONS, SIZE, TIMEOUT, WITH_MXGUARD and
# a sink_count function (the sink's message count) from the script that sources it.
# shellcheck shell=bash

# bench_start: mxguard at its default log level whatever the caller's environment says
# (lib.sh: info), the temporary directory, and a release build unless MXGUARD_BIN names one.
bench_start() {
    if [[ -n "${RUST_LOG:-}" ]]; then
        iop_log "ignoring RUST_LOG=$RUST_LOG: the benchmark runs mxguard at its default log level"
    fi
    unset RUST_LOG
    iop_init
    if [[ $WITH_MXGUARD -eq 1 && -z "${MXGUARD_BIN:-}" ]]; then
        iop_log "cargo build --release --bin mxguard"
        (cd "$IOP_ROOT" && cargo build --release --quiet --bin mxguard) || iop_die "build failed"
        MXGUARD_BIN="${CARGO_TARGET_DIR:-$IOP_ROOT/target}/release/mxguard"
    fi
}

now() { date +%s.%N; }
# rate MESSAGES SECONDS
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }'; }
# per_k COUNT: COUNT per 1,000 messages.
per_k() { awk -v c="$1" -v n="$MESSAGES" 'BEGIN { printf "%.1f", c * 1000 / n }'; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# push PORT LABEL: runs smtp-source against PORT, then waits until the sink has counted
# MESSAGES more than before. Sets ELAPSED (end to end) and ACCEPTED (smtp-source's own time).
push() {
    local port=$1 label=$2 base target start accepted_at n
    base=$(sink_count)
    target=$((base + MESSAGES))
    iop_log "$label: smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE → 127.0.0.1:$port"
    start=$(now)
    smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f "bench@local.test" \
        -t "sink@remote.test" -M client.local.test "127.0.0.1:$port" \
        >"$IOP_TMP/source-$label.log" 2>&1 || {
        tail -n 5 "$IOP_TMP/source-$label.log" >&2
        iop_die "$label: smtp-source failed"
    }
    accepted_at=$(now)
    for ((n = 0; n < TIMEOUT * 10; n++)); do
        [[ $(sink_count) -ge $target ]] && break
        sleep 0.1
    done
    local got=$(($(sink_count) - base))
    [[ $got -ge $MESSAGES ]] || iop_die "$label: the sink counted $got of $MESSAGES messages in ${TIMEOUT}s"
    ELAPSED=$(secs "$start" "$(now)")
    ACCEPTED=$(secs "$start" "$accepted_at")
    iop_log "$label: $MESSAGES delivered in ${ELAPSED}s (accepted in ${ACCEPTED}s)"
}
