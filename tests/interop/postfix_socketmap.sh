#!/usr/bin/env bash
# Interop: mxguard's socketmap policy service ([policy_service]) as Postfix's
# smtp_tls_policy_maps, with the real Postfix delivering to MX hosts by their DNS names.
#
#   swaks ─▶ private Postfix ──smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix──▶ mxguard
#              │  (smtp_dns_support_level = dnssec, smtp_tls_security_level = may)              │
#              │                                                                              │
#              ├──DNS (libc, /etc/resolv.conf) ──▶ unbound 127.0.0.1:53 (validating) ◀──trust-ad─┤
#              │                                      └─stub─▶ nsd: sm.test. (signed, NSEC3)   │
#              │                                                                              │
#              │                               nginx 127.0.0.1:443: mta-sts.*.sm.test ◀─fetch─┘
#              ├─SMTP+STARTTLS─▶ mx.sts.sm.test   127.0.0.21:25  (cert for its name, private CA)
#              ├─SMTP+STARTTLS─▶ mx.wrong.sm.test 127.0.0.22:25  (cert for another name)
#              ├─SMTP+STARTTLS─▶ mx.dane.sm.test  127.0.0.24:25  (self-signed; TLSA 3 1 1 of its key)
#              └─SMTP──────────▶ mx.plain.sm.test 127.0.0.23:25  (smtp-sink, no STARTTLS)
#
# The three TLS MX hosts are STARTTLS listeners of the same mxguard (which passes what they
# accept on to the smtp-sink). Port 25, port 53 and /etc/resolv.conf are needed as Postfix
# has them (its MX port, libc's resolver), so the script runs itself in a private network and
# mount namespace (unshare): loopback only, its own /etc/resolv.conf; nothing outside sees it.
#
# Scenarios:
#   postmap   `postmap -q KEY socketmap:inet:127.0.0.1:8461:postfix` answers, as Postfix reads
#             them: dane-only for the DANE domain that also publishes an enforced MTA-STS
#             policy, `secure match=… servername=hostname` for an enforced policy, nothing
#             (exit 1) for testing mode, no policy, a parent-domain key and a [host]:port
#             key; several keys over one connection (`postmap -q -`)
#   sts       Postfix delivers to sts.sm.test over "Verified TLS" (the secure answer)
#   wrong     wrong.sm.test's MX presents a certificate for another name: Postfix defers it
#             ("Server certificate not verified"); the MX gets nothing
#   dane      dane.sm.test's MX is self-signed (no PKIX) but matches its TLSA record: Postfix,
#             told dane-only, delivers over DANE-verified TLS. (postfix-mta-sts-resolver's
#             `secure match=…` answer would have Postfix defer it: RFC 8461 §2 violated.)
#   plain     plain.sm.test: NOTFOUND, so Postfix's default level (may) applies: delivered
#   temp      slow.sm.test's policy host never answers: the service says TEMP after
#             policy_service.timeout; Postfix defers the mail (the script prints the status
#             Postfix gives it: "4.7.5 client TLS configuration problem") and sends nothing
#   filter    refused.sm.test's MTA-STS TXT look-up is refused (unbound), so the service says
#             TEMP each time; with smtp_delivery_status_filter the hardening recipe's rule
#             "4.7.5 → 5.7.5" alone bounces that deferral; deploy/postfix/smtp_delivery_status_filter keeps it
#             deferred and still bounces a certificate that fails verification
#
# Postfix's main.cf is deploy/postfix/policy_service.cf.snippet's active lines (the private CA
# in place of the Web PKI roots).
#
# Needs root (unshare, a private Postfix; installs postfix, swaks, unbound, nsd, ldnsutils,
# nginx, openssl when missing). MXGUARD_BIN selects the binary (default: target/debug/mxguard,
# built). IOP_KEEP=1 keeps the temporary directory. Exit status 0 when every scenario passed.
set -euo pipefail

# shellcheck source=tests/interop/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ----- into a private network and mount namespace ---------------------------------------------
if [[ -z "${IOP_IN_NETNS:-}" ]]; then
    iop_is_root || iop_die "unshare and a private Postfix instance need root"
    iop_require postfix:postfix postfix:smtp-sink postfix:postmap swaks:swaks unbound:unbound \
        nsd:nsd ldnsutils:ldns-signzone ldnsutils:ldns-keygen nginx:nginx openssl:openssl \
        util-linux:unshare iproute2:ip
    iop_mxguard_bin
    MXGUARD_BIN="$(realpath "$MXGUARD_BIN")"
    export MXGUARD_BIN
    exec env IOP_IN_NETNS=1 unshare --net --mount --fork -- "$BASH" "${BASH_SOURCE[0]}" "$@"
fi
ip link set lo up
iop_init

SERVICE=127.0.0.1:8461
SOCKETMAP="socketmap:inet:$SERVICE:postfix"
RELAY_PORT=10025
NSD_PORT=5353
PF_PORT=$(iop_free_port)
PF_DIR="$IOP_TMP/postfix"
DNS="$IOP_TMP/dns"
TLS="$IOP_TMP/tls"
WWW="$IOP_TMP/www"
SINK="$IOP_TMP/sink"
RUN_ID="iop$$x$RANDOM"
mkdir -p "$DNS" "$WWW"

# ----- certificates ---------------------------------------------------------------------------
iop_tls_ca "$TLS"
iop_tls_server_cert "$TLS" mx.sts.sm.test "DNS:mx.sts.sm.test"
iop_tls_server_cert "$TLS" mx.wrong.sm.test "DNS:not-the-mx.sm.test"
iop_tls_server_cert "$TLS" mta-sts.sm.test \
    "DNS:mta-sts.sts.sm.test,DNS:mta-sts.wrong.sm.test,DNS:mta-sts.dane.sm.test,DNS:mta-sts.testing.sm.test"
# mx.dane.sm.test: self-signed, for a name that is not the MX's; DANE-EE(3) matches its key.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=self-signed.example" -addext "subjectAltName=DNS:self-signed.example" \
    -keyout "$TLS/mx.dane.key" -out "$TLS/mx.dane.pem" 2>>"$TLS/openssl.log" ||
    iop_die "openssl: self-signed certificate failed"
DANE_SPKI=$(openssl x509 -in "$TLS/mx.dane.pem" -noout -pubkey |
    openssl pkey -pubin -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1)
[[ ${#DANE_SPKI} -eq 64 ]] || iop_die "no SPKI digest"

# ----- DNS: sm.test. signed, served by nsd, validated by unbound on 127.0.0.1:53 ----------------
KEY=$(cd "$DNS" && ldns-keygen -r /dev/urandom -a ECDSAP256SHA256 -k sm.test.) ||
    iop_die "ldns-keygen failed"
{
    printf '%s\n' '$ORIGIN sm.test.' '$TTL 60' '@ SOA ns.sm.test. hostmaster.sm.test. 1 60 60 3600 60'
    printf '@ NS ns.sm.test.\nns A 127.0.0.1\n'
    # name MX-address policy-host [policy-id]
    for d in "sts 127.0.0.21" "wrong 127.0.0.22" "dane 127.0.0.24" "testing 127.0.0.23" \
        "plain 127.0.0.23" "slow 127.0.0.23" "refused 127.0.0.23"; do
        read -r name ip <<<"$d"
        printf '%s MX 10 mx.%s\nmx.%s A %s\n' "$name" "$name" "$name" "$ip"
    done
    for name in sts wrong dane testing slow; do
        printf '_mta-sts.%s TXT "v=STSv1; id=%s"\n' "$name" "$RUN_ID"
    done
    printf 'mta-sts.%s A 127.0.0.1\n' sts wrong dane testing
    # The policy host of slow.sm.test accepts connections and never answers.
    printf 'mta-sts.slow A 127.0.0.83\n'
    printf '_25._tcp.mx.dane TLSA 3 1 1 %s\n' "$DANE_SPKI"
} >"$DNS/sm.test.zone"
(cd "$DNS" && ldns-signzone -n -i "$(date -u -d '1 hour ago' +%Y%m%d%H%M%S)" \
    -f sm.test.zone.signed sm.test.zone "$KEY") >"$DNS/signzone.log" 2>&1 ||
    iop_die "ldns-signzone failed: $(cat "$DNS/signzone.log")"
iop_nsd_conf "$DNS" "$NSD_PORT" sm.test.=sm.test.zone.signed
iop_start nsd nsd -d -c "$DNS/nsd.conf"
iop_wait_port "$NSD_PORT" 20 "$IOP_PID" || iop_die "nsd did not start"
cat >"$DNS/unbound.conf" <<EOF
server:
    interface: 127.0.0.1
    port: 53
    do-ip6: no
    do-daemonize: no
    num-threads: 1
    username: ""
    chroot: ""
    directory: "$DNS"
    pidfile: "$DNS/unbound.pid"
    use-syslog: no
    logfile: "$DNS/unbound.log"
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "validator iterator"
    trust-anchor-file: "$DNS/$KEY.ds"
    local-zone: "test." nodefault
    # The MTA-STS TXT look-up of refused.sm.test fails (REFUSED): mxguard cannot tell its
    # policy, while Postfix finds its MX host.
    local-zone: "_mta-sts.refused.sm.test." always_refuse
remote-control:
    control-enable: no
stub-zone:
    name: "sm.test."
    stub-addr: 127.0.0.1@$NSD_PORT
stub-zone:
    name: "."
    stub-addr: 127.0.0.1@$NSD_PORT
EOF
iop_start unbound unbound -d -c "$DNS/unbound.conf"
iop_wait_port 53 20 "$IOP_PID" || iop_die "unbound did not start"
# libc (Postfix) asks unbound, and keeps the AD bit it sets (glibc drops it without trust-ad).
printf 'nameserver 127.0.0.1\noptions trust-ad\n' >"$IOP_TMP/resolv.conf"
mount --bind "$IOP_TMP/resolv.conf" /etc/resolv.conf

# ----- the MTA-STS policy hosts ---------------------------------------------------------------
policy() { printf 'version: STSv1\nmode: %s\nmx: %s\nmax_age: 86400\n' "$1" "$2"; }
for d in "sts enforce" "wrong enforce" "dane enforce" "testing testing"; do
    read -r name mode <<<"$d"
    mkdir -p "$WWW/mta-sts.$name.sm.test/.well-known"
    policy "$mode" "mx.$name.sm.test" >"$WWW/mta-sts.$name.sm.test/.well-known/mta-sts.txt"
done
cat >"$IOP_TMP/nginx.conf" <<EOF
worker_processes 1;
error_log $IOP_TMP/nginx-error.log;
pid $IOP_TMP/nginx.pid;
events { worker_connections 256; }
http {
    access_log $IOP_TMP/nginx-access.log;
    server {
        listen 127.0.0.1:443 ssl;
        ssl_certificate $TLS/mta-sts.sm.test.pem;
        ssl_certificate_key $TLS/mta-sts.sm.test.key;
        root $WWW/\$host;
        default_type text/plain;
    }
}
EOF
iop_start nginx nginx -c "$IOP_TMP/nginx.conf" -g 'daemon off;'
iop_wait_port 443 20 "$IOP_PID" || iop_die "nginx did not start: $(cat "$IOP_TMP/nginx.log")"
iop_start silent python3 -c '
import socket, time
s = socket.socket()
s.bind(("127.0.0.83", 443))
s.listen(16)
held = []
while True:
    held.append(s.accept())'

# ----- the MX hosts ---------------------------------------------------------------------------
mkdir -p "$SINK"
chown nobody "$SINK"
# shellcheck disable=SC2046
iop_start sink smtp-sink $(iop_sink_user_args) -4 -h mx.plain.sm.test -d "$SINK/msg." \
    127.0.0.23:25 64
sink_open() { (exec 3<>/dev/tcp/127.0.0.23/25) 2>/dev/null; }
iop_wait_for 10 sink_open || iop_die "smtp-sink did not listen on 127.0.0.23:25"

# ----- mxguard: the policy service, and the TLS MX hosts --------------------------------------
mkdir -p "$IOP_TMP/mxguard-var"
cat >"$IOP_TMP/mxguard.toml" <<EOF
hostname = "mxguard.local.test"
data_dir = "$IOP_TMP/mxguard-var"

[[listener]]
address = "127.0.0.1:$RELAY_PORT"

[[listener]]
address = "127.0.0.21:25"
tls_cert = "$TLS/mx.sts.sm.test.pem"
tls_key = "$TLS/mx.sts.sm.test.key"

[[listener]]
address = "127.0.0.22:25"
tls_cert = "$TLS/mx.wrong.sm.test.pem"
tls_key = "$TLS/mx.wrong.sm.test.key"

[[listener]]
address = "127.0.0.24:25"
tls_cert = "$TLS/mx.dane.pem"
tls_key = "$TLS/mx.dane.key"

[dns]
nameservers = ["127.0.0.1:53"]
dnssec = "trust-ad"

[delivery]
extra_ca_files = ["$TLS/ca.pem"]

[policy_service]
listen = "$SERVICE"
timeout = "2s"

[queue]
min_backoff = "30s"

# What the MX listeners accept goes to the sink.
[[route]]
domain = "*"
next_hop = "[127.0.0.23]:25"
EOF
iop_mxguard_start "$IOP_TMP/mxguard.toml" "$RELAY_PORT"
iop_wait_port 8461 10 "$MXGUARD_PID" || iop_die "the policy service does not listen"
grep -q "policy service: socketmap listening on $SERVICE" "$MXGUARD_LOG" ||
    iop_die "no 'policy service: socketmap listening' line in the mxguard log"

# ----- Postfix --------------------------------------------------------------------------------
# main.cf as deploy/postfix/policy_service.cf.snippet ships it (its active lines), with the
# private CA in place of the Web PKI roots.
iop_postfix_start "$PF_DIR" "$PF_PORT" ""
mapfile -t SNIPPET < <(grep -v '^[[:space:]]*#' "$IOP_ROOT/deploy/postfix/policy_service.cf.snippet" |
    grep -v '^[[:space:]]*$')
grep -qxF "smtp_tls_policy_maps = $SOCKETMAP" <(printf '%s\n' "${SNIPPET[@]}") ||
    iop_die "the shipped snippet does not name $SOCKETMAP"
iop_postfix_set "$PF_DIR" "${SNIPPET[@]}" \
    "smtp_tls_CAfile = $TLS/ca.pem" \
    "maximal_backoff_time = 3600s" \
    "minimal_backoff_time = 3600s"
iop_log "nsd :$NSD_PORT, unbound :53, nginx :443, mxguard :$RELAY_PORT + $SERVICE, postfix :$PF_PORT"

logged() { grep -qE -- "$2" "$1" 2>/dev/null; }
dumped() { grep -rlF -- "$2" "$1" >/dev/null 2>&1; }
# send TO MARKER: submit to Postfix's smtpd with swaks.
send() {
    local log="$IOP_TMP/swaks-$2.log"
    swaks --server "127.0.0.1:$PF_PORT" --from alice@local.test --to "$1" \
        --helo client.local.test --header "Subject: $2" --body "body $2" --timeout 30 \
        >"$log" 2>&1 || {
        tail -n 15 "$log" >&2
        return 1
    }
}
# The Postfix delivery line for RCPT (status=sent or deferred), once there is one.
pf_line() { grep -E "to=<$1>, .*status=(sent|deferred|bounced)" "$PF_DIR/maillog" | tail -n 1; }
pf_settled() { [[ -n "$(pf_line "$1")" ]]; }
wait_pf() {
    iop_wait_for 60 pf_settled "$1" || {
        echo "Postfix logged no outcome for $1" >&2
        tail -n 20 "$PF_DIR/maillog" >&2
        return 1
    }
    PF_LINE=$(pf_line "$1")
}
# postmap -q KEY against the service: sets PM_OUT and PM_RC.
pm() {
    PM_RC=0
    PM_OUT=$(postmap -c "$PF_DIR/conf" -q "$1" "$SOCKETMAP" 2>"$IOP_TMP/postmap.err") || PM_RC=$?
}

# ----- postmap --------------------------------------------------------------------------------
scenario_postmap() {
    local want key
    for want in \
        "dane.sm.test=dane-only" \
        "sts.sm.test=secure match=mx.sts.sm.test servername=hostname" \
        "STS.sm.test.=secure match=mx.sts.sm.test servername=hostname" \
        "wrong.sm.test=secure match=mx.wrong.sm.test servername=hostname"; do
        pm "${want%%=*}"
        [[ $PM_RC -eq 0 && "$PM_OUT" == "${want#*=}" ]] || {
            echo "postmap -q ${want%%=*}: exit $PM_RC, '$PM_OUT' (want '${want#*=}')" >&2
            cat "$IOP_TMP/postmap.err" >&2
            return 1
        }
    done
    for key in testing.sm.test plain.sm.test .sts.sm.test "[mx.sts.sm.test]:25" nowhere.sm.test; do
        pm "$key"
        [[ $PM_RC -eq 1 && -z "$PM_OUT" ]] || {
            echo "postmap -q $key: exit $PM_RC, '$PM_OUT' (want not found, exit 1)" >&2
            cat "$IOP_TMP/postmap.err" >&2
            return 1
        }
    done
    # Several keys, one process, one connection (postmap -q - reads keys from stdin).
    local out
    out=$(printf 'sts.sm.test\nplain.sm.test\ndane.sm.test\n' |
        postmap -c "$PF_DIR/conf" -q - "$SOCKETMAP" 2>"$IOP_TMP/postmap.err") || true
    [[ "$out" == $'sts.sm.test\tsecure match=mx.sts.sm.test servername=hostname\ndane.sm.test\tdane-only' ]] || {
        echo "postmap -q - gave: $out" >&2
        return 1
    }
}

# ----- sts ------------------------------------------------------------------------------------
scenario_sts() {
    local marker="sts-$RUN_ID"
    send bob@sts.sm.test "$marker" || return 1
    wait_pf bob@sts.sm.test || return 1
    [[ "$PF_LINE" == *"relay=mx.sts.sm.test[127.0.0.21]:25"*"status=sent"* ]] || {
        echo "not delivered to mx.sts.sm.test: $PF_LINE" >&2
        return 1
    }
    logged "$PF_DIR/maillog" "Verified TLS connection established to mx.sts.sm.test\[127.0.0.21\]:25" || {
        echo "no 'Verified TLS connection established to mx.sts.sm.test' in Postfix's log" >&2
        grep -F "mx.sts.sm.test" "$PF_DIR/maillog" >&2 || true
        return 1
    }
    iop_wait_for 30 dumped "$SINK" "$marker" || {
        echo "the message never reached the sink behind mx.sts.sm.test" >&2
        return 1
    }
}

# ----- wrong ----------------------------------------------------------------------------------
scenario_wrong() {
    local marker="wrong-$RUN_ID"
    send carol@wrong.sm.test "$marker" || return 1
    wait_pf carol@wrong.sm.test || return 1
    [[ "$PF_LINE" == *"status=deferred"*"Server certificate not verified"* ]] || {
        echo "expected a deferral with 'Server certificate not verified': $PF_LINE" >&2
        return 1
    }
    sleep 1
    if dumped "$SINK" "$marker"; then
        echo "the message reached the MX despite the wrong certificate" >&2
        return 1
    fi
}

# ----- dane -----------------------------------------------------------------------------------
scenario_dane() {
    local marker="dane-$RUN_ID"
    send dave@dane.sm.test "$marker" || return 1
    wait_pf dave@dane.sm.test || return 1
    [[ "$PF_LINE" == *"relay=mx.dane.sm.test[127.0.0.24]:25"*"status=sent"* ]] || {
        echo "not delivered to mx.dane.sm.test: $PF_LINE" >&2
        grep -F "dane.sm.test" "$PF_DIR/maillog" >&2 || true
        return 1
    }
    logged "$PF_DIR/maillog" "Verified TLS connection established to mx.dane.sm.test\[127.0.0.24\]:25" || {
        echo "no DANE-verified TLS connection to mx.dane.sm.test in Postfix's log" >&2
        grep -F "mx.dane.sm.test" "$PF_DIR/maillog" >&2 || true
        return 1
    }
    iop_wait_for 30 dumped "$SINK" "$marker" || {
        echo "the message never reached the sink behind mx.dane.sm.test" >&2
        return 1
    }
}

# ----- plain ----------------------------------------------------------------------------------
scenario_plain() {
    local marker="plain-$RUN_ID"
    send erin@plain.sm.test "$marker" || return 1
    wait_pf erin@plain.sm.test || return 1
    [[ "$PF_LINE" == *"relay=mx.plain.sm.test[127.0.0.23]:25"*"status=sent"* ]] || {
        echo "not delivered to mx.plain.sm.test: $PF_LINE" >&2
        return 1
    }
    iop_wait_for 30 dumped "$SINK" "$marker" || return 1
}

# ----- temp -----------------------------------------------------------------------------------
scenario_temp() {
    local marker="temp-$RUN_ID"
    pm slow.sm.test
    [[ $PM_RC -ne 0 && -z "$PM_OUT" ]] || {
        echo "postmap -q slow.sm.test: exit $PM_RC, '$PM_OUT' (want a lookup error)" >&2
        return 1
    }
    grep -q "temporary error: look-up timed out" "$IOP_TMP/postmap.err" || {
        echo "postmap did not report the TEMP reply: $(cat "$IOP_TMP/postmap.err")" >&2
        return 1
    }
    send frank@slow.sm.test "$marker" || return 1
    wait_pf frank@slow.sm.test || return 1
    [[ "$PF_LINE" == *"status=deferred"* ]] || {
        echo "expected a deferral: $PF_LINE" >&2
        return 1
    }
    logged "$PF_DIR/maillog" "socketmap server temporary error" || {
        echo "Postfix logged no socketmap temporary error" >&2
        return 1
    }
    sleep 1
    if dumped "$SINK" "$marker"; then
        echo "the message reached the MX although the policy was unknown" >&2
        return 1
    fi
}

# ----- filter ---------------------------------------------------------------------------------
# With the hardening recipe's "every 4.7.5 becomes 5.7.5" rule as smtp_delivery_status_filter,
# Postfix would bounce mail whose policy look-up got TEMP; deploy/postfix/smtp_delivery_status_filter
# keeps that deferral transient, and still bounces a certificate that fails verification.
scenario_filter() {
    if ! postconf -c "$PF_DIR/conf" -m | grep -qx pcre; then
        echo "SKIP: postfix-pcre not installed"
        return 0
    fi
    printf '%s\n' '/^4.7.5(.*)/ 5.7.5$1' >"$IOP_TMP/recipe_only.pcre"
    cp "$IOP_ROOT/deploy/postfix/smtp_delivery_status_filter" "$IOP_TMP/shipped.pcre"
    chmod 0644 "$IOP_TMP/recipe_only.pcre" "$IOP_TMP/shipped.pcre"
    # The recipe's rule alone: the TEMP deferral becomes a bounce.
    iop_postfix_set "$PF_DIR" "smtp_delivery_status_filter = pcre:$IOP_TMP/recipe_only.pcre"
    pm refused.sm.test
    grep -q "socketmap server temporary error: MTA-STS policy lookup failed" "$IOP_TMP/postmap.err" || {
        echo "postmap -q refused.sm.test: exit $PM_RC, '$PM_OUT': $(cat "$IOP_TMP/postmap.err")" >&2
        return 1
    }
    send gina@refused.sm.test "filter-a-$RUN_ID" || return 1
    wait_pf gina@refused.sm.test || return 1
    [[ "$PF_LINE" == *"dsn=5.7.5, status=bounced (client TLS configuration problem)"* ]] || {
        echo "expected the recipe's rule alone to bounce the TEMP deferral: $PF_LINE" >&2
        return 1
    }
    # The shipped filter: deferred, transient; a wrong certificate still bounces.
    iop_postfix_set "$PF_DIR" "smtp_delivery_status_filter = pcre:$IOP_TMP/shipped.pcre"
    send hank@refused.sm.test "filter-b-$RUN_ID" || return 1
    wait_pf hank@refused.sm.test || return 1
    [[ "$PF_LINE" == *"dsn=4.7.5, status=deferred (client TLS configuration problem)"* ]] || {
        echo "expected the shipped filter to keep the TEMP deferral transient: $PF_LINE" >&2
        return 1
    }
    send ivan@wrong.sm.test "filter-c-$RUN_ID" || return 1
    wait_pf ivan@wrong.sm.test || return 1
    [[ "$PF_LINE" == *"dsn=5.7.5, status=bounced (Server certificate not verified)"* ]] || {
        echo "expected the shipped filter to bounce a wrong certificate: $PF_LINE" >&2
        return 1
    }
}

for name in postmap sts wrong dane plain temp filter; do
    if out=$("scenario_$name" 2>&1); then
        ok "$name"
    else
        not_ok "$name" "$(echo "$out" | tail -n 8)"
    fi
done
# What Postfix makes of a TEMP answer (its dsn and text), for the README's caveat.
if line=$(pf_line frank@slow.sm.test) && [[ -n "$line" ]]; then
    echo "# Postfix on a TEMP answer: ${line#*relay=}"
fi
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
