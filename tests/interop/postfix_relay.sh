#!/usr/bin/env bash
# Interop: a real Postfix relaying through mxguard, as deployed (deploy/postfix/).
#
#   swaks ──▶ private Postfix ─relayhost─────────▶ mxguard :1 ─┬─route *───────────▶ smtp-sink (MX,
#                  ▲      └─forceenc (forced@)─▶ mxguard :2 ─┤                      no STARTTLS)
#                  │                                         ├─route reject.test─▶ smtp-sink -f RCPT
#                  └──────────── route local.test ───────────┘                     (550)
#                            (the bounce DSNs come back to Postfix)
#
# mxguard's second listener has min_level = "encrypt", and mxguard uses deploy/status_filter.
#
# Scenarios:
#   relay     mail for a remote domain arrives at the MX, through Postfix and mxguard
#   bounce    the MX answers RCPT with 550 5.1.1; mxguard's RFC 3464 bounce reaches the
#             sender's mailbox in Postfix, with the right delivery-status fields
#   forceenc  sender_dependent_default_transport_maps sends forced@'s mail through the
#             `forceenc` transport of deploy/postfix/master.cf.snippet to the second listener:
#             to the plaintext-only MX it is never delivered, and a 5.7.4 bounce ("TLS is
#             required, but was not offered by host …", headers only) comes back to forced@
#             at once, while another sender's message to the same MX is delivered
#
# Needs: postfix (postfix, smtp-sink), swaks, root (to start a Postfix instance). Everything
# runs on 127.0.0.1 with free ports, in a temporary directory; the system Postfix is neither
# used nor changed. MXGUARD_BIN selects the binary (default: target/debug/mxguard, built).
# Exit status 0 when every scenario passed.
set -euo pipefail

# shellcheck source=tests/interop/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for tool in postfix smtp-sink swaks; do
    command -v "$tool" >/dev/null || iop_die "$tool is not installed"
done
iop_is_root || iop_die "a private Postfix instance needs root"

iop_init
iop_mxguard_bin

SINK_PORT=$(iop_free_port)
REJECT_PORT=$(iop_free_port)
MX_PORT=$(iop_free_port)
MX_PORT2=$(iop_free_port)
PF_PORT=$(iop_free_port)
PF_DIR="$IOP_TMP/postfix"
MBOX="$PF_DIR/mail/mbox"
RUN_ID="iop$$x$RANDOM"

# The MXes.
iop_sink_start sink "$SINK_PORT" "$IOP_TMP/sink"
iop_sink_start reject "$REJECT_PORT" "$IOP_TMP/reject" \
    -f RCPT -B "550 5.1.1 Recipient address rejected: User unknown"

# mxguard: two listeners (the second, for forceenc, as deploy/mxguard.toml ships it), the
# shipped status filter, routes instead of DNS.
mkdir -p "$IOP_TMP/mxguard-var"
cat >"$IOP_TMP/mxguard.toml" <<EOF
hostname = "mxguard.local.test"
data_dir = "$IOP_TMP/mxguard-var"

[[listener]]
address = "127.0.0.1:$MX_PORT"

[[listener]]
address = "127.0.0.1:$MX_PORT2"
min_level = "encrypt"

[delivery]
status_filter = "$IOP_ROOT/deploy/status_filter"

[queue]
min_backoff = "1s"
max_backoff = "2s"

[[route]]
domain = "local.test"
next_hop = "[127.0.0.1]:$PF_PORT"

[[route]]
domain = "reject.test"
next_hop = "[127.0.0.1]:$REJECT_PORT"

[[route]]
domain = "*"
next_hop = "[127.0.0.1]:$SINK_PORT"
EOF
iop_mxguard_start "$IOP_TMP/mxguard.toml" "$MX_PORT"
iop_wait_port "$MX_PORT2" 10 "$MXGUARD_PID" || iop_die "second listener missing"
for port in "$MX_PORT" "$MX_PORT2"; do
    grep -q "listening on 127.0.0.1:$port" "$MXGUARD_LOG" ||
        iop_die "no 'listening on 127.0.0.1:$port' line in the mxguard log"
done

# Postfix, configured with the shipped snippets' settings.
iop_postfix_start "$PF_DIR" "$PF_PORT" "[127.0.0.1]:$MX_PORT" \
    "sender_dependent_default_transport_maps = inline:{ forced@local.test=forceenc:[127.0.0.1]:$MX_PORT2 }"
iop_log "sink :$SINK_PORT, reject :$REJECT_PORT, mxguard :$MX_PORT/:$MX_PORT2, postfix :$PF_PORT"

# send FROM TO SUBJECT BODY: submit to Postfix's smtpd with swaks.
send() {
    local log="$IOP_TMP/swaks-$3.log"
    swaks --server "127.0.0.1:$PF_PORT" --from "$1" --to "$2" --helo client.local.test \
        --header "Subject: $3" --body "$4" --timeout 30 >"$log" 2>&1 || {
        tail -n 15 "$log" >&2
        return 1
    }
}

# A file in DIR containing TEXT.
dumped() { grep -rlF -- "$2" "$1" >/dev/null 2>&1; }
# A line in FILE matching the extended regex.
logged() { grep -qE -- "$2" "$1" 2>/dev/null; }

# ----- relay ----------------------------------------------------------------------------------
scenario_relay() {
    local marker="relay-$RUN_ID"
    send alice@local.test bob@remote.test relay "body $marker" || return 1
    iop_wait_for 60 dumped "$IOP_TMP/sink" "$marker" || {
        echo "message never reached the MX" >&2
        return 1
    }
    local file
    file=$(grep -rlF -- "$marker" "$IOP_TMP/sink" | head -n 1)
    grep -qi "^X-Mail-Args: \(FROM:\)\?<alice@local.test>" "$file" || {
        echo "wrong envelope sender at the MX: $(grep X-Mail-Args "$file")" >&2
        return 1
    }
    grep -qi "^X-Rcpt-Args: \(TO:\)\?<bob@remote.test>" "$file" || return 1
    logged "$PF_DIR/maillog" "to=<bob@remote.test>, relay=127.0.0.1\[127.0.0.1\]:$MX_PORT, .*status=sent" || {
        echo "Postfix did not relay through mxguard" >&2
        return 1
    }
    iop_wait_for 10 logged "$MXGUARD_LOG" "to=<bob@remote.test>, relay=[^,]*:$SINK_PORT, .*status=sent" || {
        echo "no delivery log line in mxguard's log" >&2
        return 1
    }
}

# ----- bounce ---------------------------------------------------------------------------------
scenario_bounce() {
    local marker="bounce-$RUN_ID"
    send alice@local.test nobody@reject.test bounce "body $marker" || return 1
    iop_wait_for 90 logged "$MBOX" "^Subject: Undelivered Mail Returned to Sender" || {
        echo "no bounce in the sender's mailbox" >&2
        tail -n 5 "$MXGUARD_LOG" >&2
        return 1
    }
    # The mailbox holds one message per line block; check the DSN's fields.
    local want
    for want in \
        "^Return-Path: <>" \
        "^From: .*MAILER-DAEMON@mxguard.local.test" \
        "^To: .*alice@local.test" \
        "^Auto-Submitted: auto-replied" \
        "multipart/report; report-type=\"?delivery-status" \
        "^Content-Type: message/delivery-status" \
        "^Reporting-MTA: dns; mxguard.local.test" \
        "^Final-Recipient: rfc822; nobody@reject.test" \
        "^Action: failed" \
        "^Status: 5.1.1" \
        "^Diagnostic-Code: smtp; 550 5.1.1 Recipient address rejected" \
        "^Content-Type: message/rfc822" \
        "$marker"; do
        logged "$MBOX" "$want" || {
            echo "bounce lacks: $want" >&2
            return 1
        }
    done
    logged "$PF_DIR/maillog" "from=<>, size=" || {
        echo "Postfix did not receive the bounce from <>" >&2
        return 1
    }
    logged "$MXGUARD_LOG" "to=<nobody@reject.test>, .*status=bounced" || {
        echo "no status=bounced line in mxguard's log" >&2
        return 1
    }
}

# ----- forceenc -------------------------------------------------------------------------------
# mbox_message TEXT: sets MBOX_MSG to the message of the Postfix mailbox (mbox, "From "
# separated) that contains TEXT, folded lines joined; fails when there is none.
mbox_message() {
    MBOX_MSG="$(awk -v want="$1" '
        /^From / { if (found) exit; buf = "" }
        /^[ \t]/ && buf != "" { sub(/^[ \t]+/, " "); sub(/\n$/, "", buf); buf = buf $0 "\n"; next }
        { buf = buf $0 "\n"; if (index($0, want)) found = 1 }
        END { if (found) printf "%s", buf }' "$MBOX" 2>/dev/null)"
    [[ -n "$MBOX_MSG" ]]
}
# The forced sender's message has an outcome: Postfix has finished writing a message into
# forced@'s mailbox (only a DSN can go there), or mxguard logged a delivery line for it that
# is not a bounce (then waiting longer is pointless).
forced_settled() {
    logged "$PF_DIR/maillog" "to=<forced@local.test>, relay=virtual, .*status=sent" ||
        logged "$MXGUARD_LOG" "to=<carol@remote.test>, .*status=(sent|deferred)"
}

scenario_forceenc() {
    local marker="forceenc-$RUN_ID" plain="plain-$RUN_ID" ehlo="$IOP_TMP/sink-ehlo.log" want
    # The premise: the MX answers EHLO without STARTTLS (smtp-sink has no TLS at all).
    swaks --server "127.0.0.1:$SINK_PORT" --helo client.local.test --to probe@remote.test \
        --quit-after EHLO --timeout 10 >"$ehlo" 2>&1 || {
        echo "EHLO to the MX failed" >&2
        return 1
    }
    grep -q "^<-  250[- ]PIPELINING" "$ehlo" || {
        echo "no EHLO reply from the MX in $ehlo" >&2
        return 1
    }
    if grep -qi "^<-  250[- ]STARTTLS" "$ehlo"; then
        echo "the MX offers STARTTLS; the scenario needs one that does not" >&2
        return 1
    fi

    # forced@ goes through forceenc to the second listener; alice@, to the same MX, does not.
    send forced@local.test carol@remote.test forceenc "body $marker" || return 1
    send alice@local.test dave@remote.test forceenc-other "body $plain" || return 1

    iop_wait_for 60 dumped "$IOP_TMP/sink" "$plain" || {
        echo "the other sender's message never reached the MX" >&2
        return 1
    }
    logged "$PF_DIR/maillog" "postfix/smtp\[.*to=<dave@remote.test>, relay=127.0.0.1\[127.0.0.1\]:$MX_PORT, .*status=sent" || {
        echo "Postfix did not relay the other sender's message to the first listener" >&2
        return 1
    }
    iop_wait_for 10 logged "$MXGUARD_LOG" "to=<dave@remote.test>, relay=[^,]*:$SINK_PORT, .*tls=none, policy=none, (conn_use=[0-9]+, )?dsn=2\.[0-9.]+, status=sent" || {
        echo "no plaintext status=sent line for the other sender in mxguard's log:" >&2
        grep -F "to=<dave@remote.test>" "$MXGUARD_LOG" >&2 || true
        return 1
    }

    logged "$PF_DIR/maillog" "postfix/forceenc/smtp.*to=<carol@remote.test>, relay=127.0.0.1\[127.0.0.1\]:$MX_PORT2, .*status=sent" || {
        echo "Postfix did not use the forceenc transport to the second listener" >&2
        return 1
    }
    iop_wait_for 60 forced_settled || {
        echo "no bounce for the forced sender after 60 s" >&2
        tail -n 5 "$MXGUARD_LOG" >&2
        return 1
    }
    # One attempt, bounced at once (the status filter made 4.7.4 permanent), never sent.
    logged "$MXGUARD_LOG" "to=<carol@remote.test>, .*status=(sent|deferred)" && {
        echo "mxguard sent or deferred the forced sender's message:" >&2
        grep -F "to=<carol@remote.test>" "$MXGUARD_LOG" >&2
        return 1
    }
    logged "$MXGUARD_LOG" "to=<carol@remote.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:$SINK_PORT, .*tls=none, policy=local:encrypt, dsn=5\.7\.4, status=bounced \(5[0-9][0-9] 5\.7\.4 TLS is required, but was not offered by host " || {
        echo "no policy=local:encrypt, dsn=5.7.4, status=bounced line in mxguard's log:" >&2
        grep -F "to=<carol@remote.test>" "$MXGUARD_LOG" >&2 || true
        return 1
    }
    if dumped "$IOP_TMP/sink" "$marker"; then
        echo "the forced sender's message reached the plaintext MX" >&2
        return 1
    fi

    # The DSN in forced@'s mailbox (the one message there that reports on carol@). The message
    # was to leave only over TLS, so its bounce, which may travel without, returns the
    # headers only: the body (and its marker) must not be in it.
    mbox_message "Final-Recipient: rfc822; carol@remote.test" || {
        echo "no DSN about carol@remote.test in the forced sender's mailbox" >&2
        return 1
    }
    if grep -qF -- "$marker" <<<"$MBOX_MSG"; then
        echo "the forced sender's bounce returns the message body" >&2
        return 1
    fi
    for want in \
        "^Return-Path: <>" \
        "^From: .*MAILER-DAEMON@mxguard.local.test" \
        "^To: .*forced@local.test" \
        "^Subject: Undelivered Mail Returned to Sender" \
        "^Auto-Submitted: auto-replied" \
        "multipart/report; report-type=\"?delivery-status" \
        "^Content-Type: message/delivery-status" \
        "^Reporting-MTA: dns; mxguard.local.test" \
        "^Final-Recipient: rfc822; carol@remote.test" \
        "^Action: failed" \
        "^Status: 5\.7\.4" \
        "^Diagnostic-Code: X-Mxguard; 5[0-9][0-9] 5\.7\.4 TLS is required, but was not offered by host " \
        "^Content-Type: text/rfc822-headers" \
        "^Subject: forceenc$"; do
        grep -qE -- "$want" <<<"$MBOX_MSG" || {
            echo "the forced sender's bounce lacks: $want" >&2
            return 1
        }
    done
}

for s in relay bounce forceenc; do
    if "scenario_$s"; then ok "$s"; else not_ok "$s" "see $IOP_TMP"; fi
done

echo "postfix_relay: $PASSED passed, $FAILED failed"
if [[ $FAILED -ne 0 ]]; then
    IOP_KEEP=1
    exit 1
fi
