#!/usr/bin/env bash
# Relay throughput over verified STARTTLS: mxguard against Postfix, same load, same TLS sink.
#
# Usage:  bench/relay_tls.sh [-m MESSAGES] [-s SESSIONS] [-l BYTES] [-t TIMEOUT_S] [-k ec|rsa] [-P] [-M]
#           -m  messages to push (default 20000)
#           -s  parallel SMTP sessions of smtp-source (default 10)
#           -l  message payload size in bytes (default 5120)
#           -t  seconds to wait for the sink to count every message, per relay
#               (default 120 + MESSAGES/50)
#           -k  the key type of the private CA and the sink's certificate: ec (P-256, the
#               default) or rsa (2048 bits)
#           -P  skip the Postfix comparison
#           -M  skip mxguard (Postfix alone)
#         MXGUARD_BIN=path  use this binary instead of `cargo build --release`
#         IOP_KEEP=1        keep the temporary directory (certificates, configs, logs, spools)
#
# What it does, all on 127.0.0.1 (the set-up of bench/relay.sh, with TLS on the way out):
#   a private CA and a certificate for the sink (CN sink.bench.test, subjectAltName
#   DNS:sink.bench.test and IP:127.0.0.1), made with openssl in the temporary directory;
#   the TLS sink: a private Postfix smtpd (STARTTLS with that certificate) whose
#   before-queue proxy (smtpd_proxy_filter) is smtp-sink -c, which counts and discards: no
#   sink queue, no sink fsync, and smtpd's 250 after DATA means the message was counted;
#   phase 1: smtp-source ──▶ mxguard (release build; [[route]] "*" → [127.0.0.1]:TLS_SINK;
#            [delivery] extra_ca_files = the private CA; tls_policy_file "remote.test verify",
#            so every session must present a certificate PKIX-valid for the host dialled: the
#            IP literal 127.0.0.1, matched against the certificate's IP SAN, as rustls does;
#            mxguard reads no hosts file, so a name would need a lab DNS) ──▶ TLS sink;
#   phase 2: the same load ──▶ a private Postfix relay (relayhost = [127.0.0.1]:TLS_SINK,
#            smtp_tls_security_level = verify with smtp_tls_policy_maps
#            "[127.0.0.1]:TLS_SINK verify match=sink.bench.test" — Postfix matches DNS names,
#            not IP SANs —, smtp_tls_CAfile = the private CA, smtp_tls_connection_reuse = yes
#            (tlsproxy), smtp_tls_session_cache_database = btree:…, smtp_tls_loglevel = 1, default
#            concurrency) ──▶ the same TLS sink.
# Logging as in production (see bench/relay.sh): mxguard at its default level to mxguard.log,
# Postfix to its maillog. Time as in bench/relay.sh: first message sent until the sink has
# counted all of them.
#
# Checks, each failing the run loudly: every mxguard delivery log line with status=sent says
# tls=verified (and there is one per message); Postfix's smtp(8) logged "Verified TLS connection
# established" or "… reused" at least once per delivery and never an Untrusted, Anonymous or
# Trusted one; every session the sink's smtpd saw in a phase negotiated STARTTLS (starttls=1 on
# its "disconnect from" line) and logged its TLS handshake.
#
# Counting connections: the sink's smtpd logs "connect from" once per TCP connection; after a
# phase the relay's connections are let go (mxguard is stopped, Postfix closes cached ones after
# 2 s), the script waits until the sink holds none and has logged every disconnect, and counts
# the phase's "connect from" lines. Printed per 1,000 messages.
#
# Prints msg/s for each relay, their ratio, mxguard's peak RSS (VmHWM), and TCP connections (=
# TLS handshakes at the sink) per 1,000 messages. Needs root, postfix (smtp-source, smtp-sink,
# smtpd, tlsproxy), openssl, ss. The sink shares the CPUs with the relay under test: its TLS
# handshakes are part of what a relay that opens more connections pays.
set -euo pipefail

# shellcheck source=tests/interop/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tests/interop/lib.sh"

MESSAGES=20000
SESSIONS=10
SIZE=5120
TIMEOUT=""
WITH_POSTFIX=1
WITH_MXGUARD=1
IOP_TLS_KEY=ec
while getopts "m:s:l:t:k:PMh" opt; do
    case "$opt" in
    m) MESSAGES=$OPTARG ;;
    s) SESSIONS=$OPTARG ;;
    l) SIZE=$OPTARG ;;
    t) TIMEOUT=$OPTARG ;;
    k) IOP_TLS_KEY=$OPTARG ;;
    P) WITH_POSTFIX=0 ;;
    M) WITH_MXGUARD=0 ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d'
        exit 2
        ;;
    esac
done
for v in "$MESSAGES" "$SESSIONS" "$SIZE" ${TIMEOUT:+"$TIMEOUT"}; do
    [[ "$v" =~ ^[0-9]+$ && "$v" -gt 0 ]] || iop_die "-m, -s, -l and -t need positive numbers"
done
[[ "$IOP_TLS_KEY" == ec || "$IOP_TLS_KEY" == rsa ]] || iop_die "-k is ec or rsa"
export IOP_TLS_KEY
TIMEOUT=${TIMEOUT:-$((120 + MESSAGES / 50))}

for tool in smtp-source smtp-sink postfix openssl ss; do
    command -v "$tool" >/dev/null || iop_die "$tool is not installed (apt-get install postfix openssl iproute2)"
done
iop_is_root || iop_die "run as root (smtp-sink and the private Postfix instances need it)"

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_start

SINK_NAME=sink.bench.test
TLS_DIR="$IOP_TMP/tls"
iop_tls_ca "$TLS_DIR"
iop_tls_server_cert "$TLS_DIR" "$SINK_NAME" "DNS:$SINK_NAME,IP:127.0.0.1"
CA="$TLS_DIR/ca.pem"
iop_log "private CA and $IOP_TLS_KEY certificate for $SINK_NAME (DNS and IP 127.0.0.1) in $TLS_DIR"

SINK_PORT=$(iop_free_port)
TLS_PORT=$(iop_free_port)
MX_PORT=$(iop_free_port)
PF_PORT=$(iop_free_port)

# ----- the TLS sink: Postfix smtpd with STARTTLS, smtp-sink as its before-queue proxy ---------
SINK_LOG="$IOP_TMP/sink.log"
# shellcheck disable=SC2046
iop_start sink smtp-sink $(iop_sink_user_args) -4 -c -h inner.sink.test "127.0.0.1:$SINK_PORT" 1024
SINK_PID=$IOP_PID
iop_wait_port "$SINK_PORT" 10 "$SINK_PID" || iop_die "smtp-sink did not start"

SINK_DIR="$IOP_TMP/tls-sink"
# myhostname differs from the relay's (postfix.local.test): Postfix's smtp client refuses a
# server that greets with its own name ("loops back to myself").
iop_postfix_start "$SINK_DIR" "$TLS_PORT" "" \
    "smtpd_tls_security_level = may" \
    "smtpd_tls_cert_file = $TLS_DIR/$SINK_NAME.pem" \
    "smtpd_tls_key_file = $TLS_DIR/$SINK_NAME.key" \
    "smtpd_tls_loglevel = 1" \
    "smtpd_peername_lookup = no" \
    "smtpd_proxy_filter = 127.0.0.1:$SINK_PORT" \
    "default_process_limit = 200"
iop_postfix_set "$SINK_DIR" "myhostname=$SINK_NAME"
iop_log "TLS sink: Postfix smtpd on 127.0.0.1:$TLS_PORT, proxying to smtp-sink on $SINK_PORT"

# Messages the inner smtp-sink has counted so far.
sink_count() { iop_sink_counter "$SINK_LOG" mesg; }
# Lines of the TLS sink's maillog in the segment after MARK, by what they say.
sink_log() { iop_postfix_log_since "$SINK_DIR" "$1"; }
sink_connects() { sink_log "$1" | grep -c 'postfix/smtpd\[[0-9]*\]: connect from' || true; }
sink_disconnects() { sink_log "$1" | grep -c 'postfix/smtpd\[[0-9]*\]: disconnect from' || true; }
# Sessions that ended without STARTTLS (no "starttls=1" on their disconnect line).
sink_plain() {
    sink_log "$1" | grep 'postfix/smtpd\[[0-9]*\]: disconnect from' | grep -vc ' starttls=1' || true
}
sink_tls() { sink_log "$1" | grep -c 'postfix/smtpd\[[0-9]*\]: .* TLS connection established from' || true; }
sink_all_logged() { [[ $(sink_disconnects "$1") -ge $(sink_connects "$1") ]]; }

# settle LABEL: waits until the TLS sink holds no connection and has logged every disconnect.
settle() {
    local mark=${2:-}
    iop_wait_port_idle "$TLS_PORT" 30 || iop_die "$1: connections to the TLS sink still open"
    if [[ -n "$mark" ]]; then
        iop_wait_for 15 sink_all_logged "$mark" ||
            iop_die "$1: the TLS sink logged $(sink_connects "$mark") connects, $(sink_disconnects "$mark") disconnects"
    fi
}


# check_sink LABEL MARK: every session of the phase negotiated TLS; sets CONNS.
check_sink() {
    local label=$1 mark=$2 plain tls
    CONNS=$(sink_connects "$mark")
    plain=$(sink_plain "$mark")
    tls=$(sink_tls "$mark")
    [[ $CONNS -gt 0 ]] || iop_die "$label: the TLS sink logged no connection"
    [[ $plain -eq 0 ]] || iop_die "$label: $plain of $CONNS sessions at the sink ended without STARTTLS"
    [[ $tls -ge $CONNS ]] || iop_die "$label: $tls TLS handshakes logged by the sink for $CONNS connections"
}

# ----- phase 1: mxguard -----------------------------------------------------------------------
MX_ELAPSED=""
if [[ $WITH_MXGUARD -eq 1 ]]; then
    mkdir -p "$IOP_TMP/mxguard-var"
    echo "remote.test verify" >"$IOP_TMP/mxguard-tls_policy"
    cat >"$IOP_TMP/mxguard.toml" <<EOF
hostname = "mxguard.bench.test"
data_dir = "$IOP_TMP/mxguard-var"

[[listener]]
address = "127.0.0.1:$MX_PORT"

[delivery]
extra_ca_files = ["$CA"]
tls_policy_file = "$IOP_TMP/mxguard-tls_policy"

[[route]]
domain = "*"
next_hop = "[127.0.0.1]:$TLS_PORT"
EOF
    settle mxguard
    MARK=$(iop_postfix_log_lines "$SINK_DIR")
    iop_mxguard_start "$IOP_TMP/mxguard.toml" "$MX_PORT"
    push "$MX_PORT" mxguard
    MX_ELAPSED=$ELAPSED
    MX_ACCEPTED=$ACCEPTED
    MX_RSS_KB=$(awk '/^VmHWM:/ { print $2 }' "/proc/$MXGUARD_PID/status" 2>/dev/null || echo 0)
    iop_stop_pid "$MXGUARD_PID"
    settle mxguard "$MARK"
    check_sink mxguard "$MARK"
    MX_CONNS=$CONNS
    MX_SENT=$(grep -c ', status=sent (' "$MXGUARD_LOG" || true)
    MX_VERIFIED=$(grep ', status=sent (' "$MXGUARD_LOG" | grep -c ' tls=verified,' || true)
    [[ $MX_SENT -ge $MESSAGES ]] ||
        iop_die "mxguard: $MX_SENT delivery log lines with status=sent for $MESSAGES messages"
    [[ $MX_VERIFIED -eq $MX_SENT ]] || {
        grep ', status=sent (' "$MXGUARD_LOG" | grep -v ' tls=verified,' | head -n 3 >&2
        iop_die "mxguard: only $MX_VERIFIED of $MX_SENT deliveries say tls=verified"
    }
    iop_log "mxguard: $MX_VERIFIED deliveries logged tls=verified; $MX_CONNS TLS sessions at the sink"
fi

# ----- phase 2: Postfix -----------------------------------------------------------------------
PF_ELAPSED=""
if [[ $WITH_POSTFIX -eq 1 ]]; then
    PF_DIR="$IOP_TMP/postfix"
    echo "[127.0.0.1]:$TLS_PORT verify match=$SINK_NAME" >"$IOP_TMP/postfix-tls_policy"
    iop_postfix_start "$PF_DIR" "$PF_PORT" "[127.0.0.1]:$TLS_PORT" \
        "smtp_tls_security_level = verify" \
        "smtp_tls_policy_maps = texthash:$IOP_TMP/postfix-tls_policy" \
        "smtp_tls_CAfile = $CA" \
        "smtp_tls_connection_reuse = yes" \
        "smtp_tls_session_cache_database = btree:$PF_DIR/data/smtp_scache" \
        "smtp_tls_loglevel = 1"
    # smtp_tls_connection_reuse hands the TLS sessions to tlsproxy(8).
    iop_postfix_add_services "$PF_DIR" "tlsproxy  unix  -       -       n       -       0       tlsproxy"
    settle postfix
    MARK=$(iop_postfix_log_lines "$SINK_DIR")
    push "$PF_PORT" postfix
    PF_ELAPSED=$ELAPSED
    PF_ACCEPTED=$ACCEPTED
    iop_wait_for 30 iop_postfix_queue_empty "$PF_DIR" || iop_log "postfix queue not empty yet"
    settle postfix "$MARK"
    check_sink postfix "$MARK"
    PF_CONNS=$CONNS
    pf_sent() { grep -c "relay=127.0.0.1\\[127.0.0.1\\]:$TLS_PORT, .*status=sent" "$PF_DIR/maillog" || true; }
    pf_all_logged() { [[ $(pf_sent) -ge $MESSAGES ]]; }
    iop_wait_for 10 pf_all_logged || true
    PF_SENT=$(pf_sent)
    # With smtp_tls_connection_reuse, smtp(8) logs "Verified TLS connection established" for
    # a new connection (tlsproxy(8), which made the handshake, logs it too) and "… reused"
    # for each later delivery over it: one smtp(8) line per delivery, saying how it was
    # authenticated.
    pf_tls() { grep -Ec "postfix/smtp\[[0-9]+\]: $1 TLS connection (established|reused) to" \
        "$PF_DIR/maillog" || true; }
    PF_VERIFIED=$(pf_tls Verified)
    PF_WEAKER=$(pf_tls '(Untrusted|Anonymous|Trusted)')
    PF_HANDSHAKES=$(grep -c "postfix/tlsproxy\[[0-9]*\]: Verified TLS connection established to" \
        "$PF_DIR/maillog" || true)
    [[ $PF_SENT -ge $MESSAGES ]] ||
        iop_die "postfix: $PF_SENT maillog lines with status=sent for $MESSAGES messages"
    [[ $PF_WEAKER -eq 0 ]] || iop_die "postfix: $PF_WEAKER TLS sessions logged as not verified"
    [[ $PF_VERIFIED -ge $PF_SENT ]] ||
        iop_die "postfix: $PF_VERIFIED verified TLS sessions logged for $PF_SENT deliveries"
    iop_log "postfix: $PF_VERIFIED deliveries over verified TLS, none weaker; $PF_HANDSHAKES handshakes (tlsproxy); $PF_CONNS TLS sessions at the sink"
fi

# ----- results --------------------------------------------------------------------------------
echo
echo "relay benchmark over verified STARTTLS ($IOP_TLS_KEY certificate): $MESSAGES messages of $SIZE bytes, $SESSIONS sessions, $(nproc) CPUs"
if [[ -n "$MX_ELAPSED" ]]; then
    printf '  mxguard: %6s msg/s  (%ss end to end; accepted in %ss)  peak RSS %s MB\n' \
        "$(rate "$MESSAGES" "$MX_ELAPSED")" "$MX_ELAPSED" "$MX_ACCEPTED" \
        "$(awk -v k="$MX_RSS_KB" 'BEGIN { printf "%.1f", k / 1024 }')"
    printf '           %s TCP connections to the sink per 1,000 messages (%s); %s of %s deliveries logged tls=verified\n' \
        "$(per_k "$MX_CONNS")" "$MX_CONNS" "$MX_VERIFIED" "$MX_SENT"
fi
if [[ -n "$PF_ELAPSED" ]]; then
    printf '  postfix: %6s msg/s  (%ss end to end; accepted in %ss)\n' \
        "$(rate "$MESSAGES" "$PF_ELAPSED")" "$PF_ELAPSED" "$PF_ACCEPTED"
    printf '           %s TCP connections to the sink per 1,000 messages (%s); %s of %s deliveries logged Verified TLS\n' \
        "$(per_k "$PF_CONNS")" "$PF_CONNS" "$PF_VERIFIED" "$PF_SENT"
fi
if [[ -n "$MX_ELAPSED" && -n "$PF_ELAPSED" ]]; then
    printf '  ratio mxguard/postfix: %s\n' \
        "$(awk -v a="$PF_ELAPSED" -v b="$MX_ELAPSED" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
fi
