#!/usr/bin/env bash
# Interop: DANE through a real validating resolver, `[dns] dnssec = "trust-ad"` (the Postfix
# model: smtp_dns_support_level = dnssec with a local unbound).
#
#   swaks ─▶ mxguard ──DNS──▶ unbound (validating; trust anchor: the DS of test.) ──stub──▶ nsd
#              │                 nsd serves  test. (signed, NSEC3) ──DS──▶ dane.test. (signed)
#              │                                                └─no DS─▶ plain.test. (unsigned)
#              ├─SMTP+STARTTLS─▶ private Postfix = mx.dane.test  (self-signed certificate for
#              │                 "not-the-mx.example"; TLSA 3 1 1 of its key)
#              └─SMTP──────────▶ smtp-sink = mx.plain.test (no STARTTLS)
#
# Scenarios:
#   resolver  unbound validates: AD on mx.dane.test A and its TLSA, none for plain.test
#   dane      bob@dane.test goes over TLS authenticated by DANE-EE (names ignored):
#             tls=verified, policy=dane, status=sent, and the MX has the message
#   plain     carol@plain.test (an insecure delegation, no TLS at the MX): policy=none, sent
#   mismatch  the TLSA digest changed (zone re-signed, nsd and unbound restarted):
#             status=deferred "Server certificate not verified", the MX gets nothing
#   bogus     the TLSA record forged after signing: unbound answers SERVFAIL, mxguard defers
#             with a 4.7.0 "TLSA lookup error" (never 4.7.5), the MX gets nothing
#
# Needs root (private Postfix; installs postfix, swaks, unbound, ldnsutils, nsd when missing).
# Everything listens on 127.0.0.1 and 127.0.0.2 with free ports, in a temporary directory;
# unbound asks nothing but nsd (a stub for "." too). Exit status 0 when every scenario passed.
set -euo pipefail

# shellcheck source=tests/interop/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

iop_is_root || iop_die "a private Postfix instance needs root"
iop_require postfix:postfix postfix:smtp-sink swaks:swaks unbound:unbound nsd:nsd \
    ldnsutils:ldns-signzone ldnsutils:ldns-keygen ldnsutils:drill openssl:openssl
iop_init
iop_mxguard_bin

NSD_PORT=$(iop_free_port)
UNBOUND_PORT=$(iop_free_port)
SMTP_PORT=$(iop_free_port) # the MX port of every host (delivery.smtp_port)
RELAY_PORT=$(iop_free_port)
MX_IP=127.0.0.1    # mx.dane.test: Postfix with STARTTLS
PLAIN_IP=127.0.0.2 # mx.plain.test: smtp-sink, no TLS
DNS="$IOP_TMP/dns"
MX_DIR="$IOP_TMP/mx"
SINK="$IOP_TMP/plain-sink"
RUN_ID="iop$$x$RANDOM"
mkdir -p "$DNS"

# ----- the MX certificate and its TLSA record ------------------------------------------------
# Its name has nothing to do with mx.dane.test: DANE-EE(3) matches the key only (RFC 7672 §3.1.1).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=not-the-mx.example" -addext "subjectAltName=DNS:not-the-mx.example" \
    -keyout "$IOP_TMP/mx-key.pem" -out "$IOP_TMP/mx-cert.pem" 2>"$IOP_TMP/openssl.log" ||
    iop_die "openssl could not make the MX certificate"
SPKI_SHA256=$(openssl x509 -in "$IOP_TMP/mx-cert.pem" -noout -pubkey |
    openssl pkey -pubin -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1)
WRONG_SHA256=$(echo "not the key" | openssl dgst -sha256 -r | cut -d' ' -f1)
[[ ${#SPKI_SHA256} -eq 64 ]] || iop_die "no SPKI digest"

# ----- zones ----------------------------------------------------------------------------------
keygen() { (cd "$DNS" && ldns-keygen -r /dev/urandom -a ECDSAP256SHA256 -k "$1"); }
KEY_TEST=$(keygen test.) || iop_die "ldns-keygen failed"
KEY_DANE=$(keygen dane.test.) || iop_die "ldns-keygen failed"
SERIAL=1

# write_zones DIGEST [FORGED]: the three zones, dane.test. with `TLSA 3 1 1 DIGEST`; the signed
# ones signed with NSEC3 (inception an hour back, so clocks need not agree to the second).
# With FORGED, nsd serves that digest under the signature made for DIGEST: bogus data.
write_zones() {
    local digest=$1 forged=${2:-} soa inception
    SERIAL=$((SERIAL + 1))
    soa="@ SOA ns.test. hostmaster.test. $SERIAL 60 60 3600 60"
    inception=$(date -u -d '1 hour ago' +%Y%m%d%H%M%S)
    {
        printf '%s\n' "\$ORIGIN test." "\$TTL 60" "$soa"
        printf '@ NS ns.test.\nns A 127.0.0.1\n'
        printf 'dane NS ns.test.\nplain NS ns.test.\n' # plain.test.: no DS, so insecure
        cat "$DNS/$KEY_DANE.ds"
    } >"$DNS/test.zone"
    {
        printf '%s\n' "\$ORIGIN dane.test." "\$TTL 60" "$soa"
        printf '@ NS ns.test.\n@ MX 10 mx.dane.test.\nmx A %s\n' "$MX_IP"
        printf '_%s._tcp.mx TLSA 3 1 1 %s\n' "$SMTP_PORT" "$digest"
    } >"$DNS/dane.test.zone"
    {
        printf '%s\n' "\$ORIGIN plain.test." "\$TTL 60" "$soa"
        printf '@ NS ns.test.\n@ MX 10 mx.plain.test.\nmx A %s\n' "$PLAIN_IP"
    } >"$DNS/plain.test.zone"
    local zone key
    for zone in test dane.test; do
        key=$KEY_TEST
        [[ $zone == dane.test ]] && key=$KEY_DANE
        (cd "$DNS" && ldns-signzone -n -i "$inception" -f "$zone.zone.signed" \
            "$zone.zone" "$key") >>"$DNS/signzone.log" 2>&1 || {
            cat "$DNS/signzone.log" >&2
            iop_die "ldns-signzone $zone failed"
        }
    done
    if [[ -n "$forged" ]]; then
        sed -i "s/$digest/$forged/" "$DNS/dane.test.zone.signed"
    fi
}

iop_nsd_conf "$DNS" "$NSD_PORT" test.=test.zone.signed dane.test.=dane.test.zone.signed \
    plain.test.=plain.test.zone

# Stubs for every zone (nsd is not on port 53, so unbound must never follow NS records to it)
# and for "." (so nothing is ever asked of the Internet's root).
cat >"$DNS/unbound.conf" <<EOF
server:
    interface: 127.0.0.1@$UNBOUND_PORT
    port: $UNBOUND_PORT
    do-ip6: no
    do-daemonize: no
    num-threads: 1
    outgoing-range: 64
    username: ""
    chroot: ""
    directory: "$DNS"
    pidfile: "$DNS/unbound.pid"
    use-syslog: no
    logfile: "$DNS/unbound.log"
    verbosity: 1
    log-servfail: yes
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "validator iterator"
    trust-anchor-file: "$DNS/$KEY_TEST.ds"
    val-log-level: 2
    local-zone: "test." nodefault
remote-control:
    control-enable: no
stub-zone:
    name: "test."
    stub-addr: 127.0.0.1@$NSD_PORT
stub-zone:
    name: "dane.test."
    stub-addr: 127.0.0.1@$NSD_PORT
stub-zone:
    name: "plain.test."
    stub-addr: 127.0.0.1@$NSD_PORT
stub-zone:
    name: "."
    stub-addr: 127.0.0.1@$NSD_PORT
EOF

NSD_PID=""
UNBOUND_PID=""
# (Re)starts nsd and then unbound (a fresh unbound has an empty cache).
start_dns() {
    if [[ -n "$UNBOUND_PID" ]]; then iop_stop_pid "$UNBOUND_PID"; fi
    if [[ -n "$NSD_PID" ]]; then iop_stop_pid "$NSD_PID"; fi
    nsd-checkconf "$DNS/nsd.conf" || iop_die "nsd-checkconf rejects nsd.conf"
    iop_start nsd nsd -d -c "$DNS/nsd.conf"
    NSD_PID=$IOP_PID
    iop_wait_port "$NSD_PORT" 20 "$NSD_PID" || {
        cat "$IOP_TMP/nsd.log" "$DNS/nsd.log" >&2 2>/dev/null || true
        iop_die "nsd did not start"
    }
    unbound-checkconf "$DNS/unbound.conf" >/dev/null || iop_die "unbound-checkconf rejects unbound.conf"
    iop_start unbound unbound -d -c "$DNS/unbound.conf"
    UNBOUND_PID=$IOP_PID
    iop_wait_port "$UNBOUND_PORT" 20 "$UNBOUND_PID" || {
        cat "$IOP_TMP/unbound.log" "$DNS/unbound.log" >&2 2>/dev/null || true
        iop_die "unbound did not start"
    }
}

write_zones "$SPKI_SHA256"
start_dns

# ----- the MXes -------------------------------------------------------------------------------
iop_postfix_start "$MX_DIR" "$SMTP_PORT" "" \
    "myhostname = mx.dane.test" \
    "virtual_mailbox_domains = dane.test" \
    "smtpd_tls_security_level = may" \
    "smtpd_tls_cert_file = $IOP_TMP/mx-cert.pem" \
    "smtpd_tls_key_file = $IOP_TMP/mx-key.pem" \
    "smtpd_tls_loglevel = 1"
MBOX="$MX_DIR/mail/mbox"

mkdir -p "$SINK"
chown nobody "$SINK"
# shellcheck disable=SC2046
iop_start plain-sink smtp-sink $(iop_sink_user_args) -4 -h mx.plain.test -d "$SINK/msg." \
    "$PLAIN_IP:$SMTP_PORT" 16
plain_open() { (exec 3<>"/dev/tcp/$PLAIN_IP/$SMTP_PORT") 2>/dev/null; }
iop_wait_for 10 plain_open || iop_die "smtp-sink did not listen on $PLAIN_IP:$SMTP_PORT"

# ----- mxguard --------------------------------------------------------------------------------
mkdir -p "$IOP_TMP/mxguard-var"
cat >"$IOP_TMP/mxguard.toml" <<EOF
hostname = "mxguard.local.test"
data_dir = "$IOP_TMP/mxguard-var"

[[listener]]
address = "127.0.0.1:$RELAY_PORT"

[dns]
nameservers = ["127.0.0.1:$UNBOUND_PORT"]
dnssec = "trust-ad"
timeout = "5s"

[delivery]
smtp_port = $SMTP_PORT

[queue]
min_backoff = "30s"
max_backoff = "60s"
EOF
iop_mxguard_start "$IOP_TMP/mxguard.toml" "$RELAY_PORT"
iop_log "nsd :$NSD_PORT, unbound :$UNBOUND_PORT, MXes $MX_IP/$PLAIN_IP :$SMTP_PORT, mxguard :$RELAY_PORT"

# send TO MARKER: submit to mxguard with swaks.
send() {
    local log="$IOP_TMP/swaks-$2.log"
    swaks --server "127.0.0.1:$RELAY_PORT" --from alice@local.test --to "$1" \
        --helo client.local.test --header "Subject: $2" --body "body $2" --timeout 30 \
        >"$log" 2>&1 || {
        tail -n 15 "$log" >&2
        return 1
    }
}
logged() { grep -qE -- "$2" "$1" 2>/dev/null; }
dumped() { grep -rlF -- "$2" "$1" >/dev/null 2>&1; }

# drill_flags NAME TYPE: the header flags unbound's reply carries (DO bit set).
drill_flags() {
    drill -D -p "$UNBOUND_PORT" "$1" @127.0.0.1 "$2" 2>&1 | sed -n 's/^;; flags: \([^;]*\);.*/\1/p'
}

# ----- resolver -------------------------------------------------------------------------------
scenario_resolver() {
    local flags q name type
    for q in "mx.dane.test A" "dane.test MX" "_$SMTP_PORT._tcp.mx.dane.test TLSA"; do
        read -r name type <<<"$q"
        flags=$(drill_flags "$name" "$type")
        [[ " $flags " == *" ad "* ]] || {
            echo "no AD bit for $q (flags: $flags)" >&2
            drill -D -p "$UNBOUND_PORT" "$name" @127.0.0.1 "$type" >&2 || true
            tail -n 20 "$DNS/unbound.log" >&2
            return 1
        }
    done
    flags=$(drill_flags mx.plain.test A)
    [[ " $flags " == *" qr "* && " $flags " != *" ad "* ]] || {
        echo "plain.test is insecure, yet flags: $flags" >&2
        return 1
    }
}

# ----- dane -----------------------------------------------------------------------------------
scenario_dane() {
    local marker="dane-$RUN_ID"
    send bob@dane.test "$marker" || return 1
    iop_wait_for 30 logged "$MXGUARD_LOG" "to=<bob@dane.test>, .*status=" || {
        echo "no delivery log line for bob@dane.test" >&2
        tail -n 20 "$MXGUARD_LOG" >&2
        return 1
    }
    local line
    line=$(grep -E "to=<bob@dane.test>, .*status=" "$MXGUARD_LOG" | head -n 1)
    local want
    for want in "relay=mx.dane.test\[$MX_IP\]:$SMTP_PORT, " ", tls=verified, " \
        ", policy=dane, " ", status=sent "; do
        [[ "$line" =~ $want ]] || {
            echo "delivery line lacks '$want': $line" >&2
            return 1
        }
    done
    iop_wait_for 30 logged "$MBOX" "$marker" || {
        echo "the message never reached mx.dane.test" >&2
        return 1
    }
    logged "$MX_DIR/maillog" "TLS connection established from" || {
        echo "Postfix at mx.dane.test logged no TLS connection" >&2
        return 1
    }
}

# ----- plain ----------------------------------------------------------------------------------
scenario_plain() {
    local marker="plain-$RUN_ID"
    send carol@plain.test "$marker" || return 1
    iop_wait_for 30 dumped "$SINK" "$marker" || {
        echo "the message never reached mx.plain.test" >&2
        tail -n 10 "$MXGUARD_LOG" >&2
        return 1
    }
    iop_wait_for 10 logged "$MXGUARD_LOG" \
        "to=<carol@plain.test>, relay=mx.plain.test\[$PLAIN_IP\]:$SMTP_PORT, .*, tls=none, (.*, )?policy=none, .*status=sent" || {
        echo "no 'tls=none ... policy=none ... status=sent' line for carol@plain.test:" >&2
        grep -F "carol@plain.test" "$MXGUARD_LOG" >&2 || true
        return 1
    }
}

# ----- mismatch -------------------------------------------------------------------------------
scenario_mismatch() {
    local marker="mismatch-$RUN_ID"
    write_zones "$WRONG_SHA256"
    start_dns
    local flags
    flags=$(drill_flags "_$SMTP_PORT._tcp.mx.dane.test" TLSA)
    [[ " $flags " == *" ad "* ]] || {
        echo "the re-signed TLSA record does not validate (flags: $flags)" >&2
        return 1
    }
    drill -D -p "$UNBOUND_PORT" "_$SMTP_PORT._tcp.mx.dane.test" @127.0.0.1 TLSA 2>&1 |
        grep -qi "$WRONG_SHA256" || {
        echo "unbound still serves the old TLSA record" >&2
        return 1
    }
    send dave@dane.test "$marker" || return 1
    iop_wait_for 30 logged "$MXGUARD_LOG" "to=<dave@dane.test>, .*status=" || {
        echo "no delivery log line for dave@dane.test" >&2
        tail -n 20 "$MXGUARD_LOG" >&2
        return 1
    }
    local line
    line=$(grep -E "to=<dave@dane.test>, .*status=" "$MXGUARD_LOG" | head -n 1)
    [[ "$line" == *", policy=dane, "* && "$line" == *", dsn=4.7.5, status=deferred "* &&
        "$line" == *"Server certificate not verified"* ]] || {
        echo "expected a deferral for the wrong TLSA digest: $line" >&2
        return 1
    }
    sleep 2
    if logged "$MBOX" "$marker"; then
        echo "mx.dane.test got the message despite the TLSA mismatch" >&2
        return 1
    fi
}

# ----- bogus ----------------------------------------------------------------------------------
scenario_bogus() {
    local marker="bogus-$RUN_ID"
    write_zones "$SPKI_SHA256" "$WRONG_SHA256"
    start_dns
    drill -D -p "$UNBOUND_PORT" "_$SMTP_PORT._tcp.mx.dane.test" @127.0.0.1 TLSA 2>&1 |
        grep -q "rcode: SERVFAIL" || {
        echo "unbound does not answer SERVFAIL for the forged TLSA record" >&2
        return 1
    }
    send erin@dane.test "$marker" || return 1
    iop_wait_for 30 logged "$MXGUARD_LOG" "to=<erin@dane.test>, .*status=" || {
        echo "no delivery log line for erin@dane.test" >&2
        tail -n 20 "$MXGUARD_LOG" >&2
        return 1
    }
    local line
    line=$(grep -E "to=<erin@dane.test>, .*status=" "$MXGUARD_LOG" | head -n 1)
    # A DNSSEC failure says nothing about the MX's TLS: 4.7.0, never 4.7.5 (DESIGN.md).
    [[ "$line" == *", dsn=4.7.0, status=deferred "* && "$line" == *"TLSA lookup error"* ]] || {
        echo "expected a 4.7.0 TLSA lookup error for the forged TLSA record: $line" >&2
        return 1
    }
    sleep 1
    if logged "$MBOX" "$marker"; then
        echo "mx.dane.test got the message although its TLSA record is bogus" >&2
        return 1
    fi
}

for s in resolver dane plain mismatch bogus; do
    if "scenario_$s"; then ok "$s"; else not_ok "$s" "see $IOP_TMP"; fi
done

echo "dane_unbound: $PASSED passed, $FAILED failed"
if [[ $FAILED -ne 0 ]]; then
    IOP_KEEP=1
    exit 1
fi
