#!/usr/bin/env bash
# Interop: in-process DNSSEC validation (`[dns] dnssec = "validate"`) from private trust
# anchors, against unbound as the reference validator (a differential test).
#
#   nsd serves, all signed by ldns-signzone with a separate KSK (257) and ZSK (256):
#     .           ECDSAP256SHA256, NSEC             holds the DS of test.
#     test.       RSASHA256, NSEC3 with opt-out     holds the DS of sec.test.; forged.test.'s A
#                                                   is changed after signing (bogus)
#     sec.test.   ECDSAP256SHA256, NSEC3
#     plain.test. unsigned, delegated without a DS (insecure, covered by the opt-out)
#
# For each trust anchor configuration, unbound (trust-anchor-file) and `mxguard dns NAME TYPE`
# (trust_anchor_file) get the same anchors and answer the same questions; each verdict
# (secure, insecure, bogus, NXDOMAIN or NODATA and whether proven) must agree between the two
# and with the expected one. The anchors: sec.test.'s KSK as a DNSKEY and as a DS (anchor at
# the zone), test.'s KSK as a DNSKEY and as a DS (at the parent), the root's KSK (at the root
# of the lab), and test.'s DS together with sec.test.'s DNSKEY (several anchors at once).
# Then a ZSK rollover in sec.test. (the anchored KSK signs a new ZSK, the old one goes):
# still secure.
#
# Needs nsd, unbound, ldnsutils (installed by tests/run.sh as root). Loopback only, free
# ports, a temporary directory. Exit status 0 when every check passed.
set -euo pipefail

# shellcheck source=tests/interop/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

iop_require unbound:unbound nsd:nsd ldnsutils:ldns-signzone ldnsutils:ldns-keygen ldnsutils:drill
iop_init
iop_mxguard_bin

NSD_PORT=$(iop_free_port)
UNBOUND_PORT=$(iop_free_port)
DNS="$IOP_TMP/dns"
mkdir -p "$DNS"

# ----- keys and zones -------------------------------------------------------------------------
keygen() { (cd "$DNS" && ldns-keygen -r /dev/urandom "$@") || iop_die "ldns-keygen $*"; }
ROOT_KSK=$(keygen -a ECDSAP256SHA256 -k .)
ROOT_ZSK=$(keygen -a ECDSAP256SHA256 .)
TEST_KSK=$(keygen -a RSASHA256 -b 2048 -k test.)
TEST_ZSK=$(keygen -a RSASHA256 -b 1024 test.)
SEC_KSK=$(keygen -a ECDSAP256SHA256 -k sec.test.)
SEC_ZSK=$(keygen -a ECDSAP256SHA256 sec.test.)
SERIAL=1

# sign ZONE FILE KEY... [-- SIGNZONE-OPTIONS]: ZONE's text in FILE signed into FILE.signed,
# inception an hour back (clocks need not agree to the second).
sign() {
    local file=$1 keys=() opts=()
    shift
    while [[ $# -gt 0 && $1 != -- ]]; do keys+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift && opts=("$@")
    (cd "$DNS" && ldns-signzone "${opts[@]}" -i "$(date -u -d '1 hour ago' +%Y%m%d%H%M%S)" \
        -f "$file.signed" "$file" "${keys[@]}") >>"$DNS/signzone.log" 2>&1 || {
        cat "$DNS/signzone.log" >&2
        iop_die "ldns-signzone $file failed"
    }
}

# write_sec ZSK: sec.test. signed by its KSK and ZSK.
write_sec() {
    SERIAL=$((SERIAL + 1))
    {
        printf '%s\n' "\$ORIGIN sec.test." "\$TTL 60" "@ SOA ns.test. h.test. $SERIAL 60 60 3600 60"
        printf '@ NS ns.test.\n@ MX 10 mx.sec.test.\nmx A 127.0.0.4\n'
    } >"$DNS/sec.test.zone"
    sign sec.test.zone "$SEC_KSK" "$1" -- -n -t 0
}

{
    printf '%s\n' "\$ORIGIN ." "\$TTL 60" "@ SOA ns.test. h.test. 1 60 60 3600 60"
    printf '@ NS ns.test.\ntest. NS ns.test.\nns.test. A 127.0.0.1\n'
    cat "$DNS/$TEST_KSK.ds"
} >"$DNS/root.zone"
sign root.zone "$ROOT_KSK" "$ROOT_ZSK"
{
    printf '%s\n' "\$ORIGIN test." "\$TTL 60" "@ SOA ns.test. h.test. 1 60 60 3600 60"
    printf '@ NS ns.test.\nns A 127.0.0.1\n@ MX 10 mx.test.\nmx A 127.0.0.3\nforged A 127.0.0.9\n'
    printf 'sec NS ns.test.\nplain NS ns.test.\n'
    cat "$DNS/$SEC_KSK.ds"
} >"$DNS/test.zone"
sign test.zone "$TEST_KSK" "$TEST_ZSK" -- -n -p -t 0
sed -i 's/127\.0\.0\.9$/127.0.0.10/' "$DNS/test.zone.signed" # forged after signing: bogus
grep -q '127\.0\.0\.10$' "$DNS/test.zone.signed" || iop_die "could not forge forged.test."
write_sec "$SEC_ZSK"
{
    printf '%s\n' "\$ORIGIN plain.test." "\$TTL 60" "@ SOA ns.test. h.test. 1 60 60 3600 60"
    printf '@ NS ns.test.\n@ MX 10 mx.plain.test.\nmx A 127.0.0.5\n'
} >"$DNS/plain.test.zone"

iop_nsd_conf "$DNS" "$NSD_PORT" .=root.zone.signed test.=test.zone.signed \
    sec.test.=sec.test.zone.signed plain.test.=plain.test.zone

NSD_PID=""
start_nsd() {
    if [[ -n "$NSD_PID" ]]; then iop_stop_pid "$NSD_PID"; fi
    nsd-checkconf "$DNS/nsd.conf" || iop_die "nsd-checkconf rejects nsd.conf"
    iop_start nsd nsd -d -c "$DNS/nsd.conf"
    NSD_PID=$IOP_PID
    iop_wait_port "$NSD_PORT" 20 "$NSD_PID" || {
        cat "$DNS/nsd.log" >&2 2>/dev/null || true
        iop_die "nsd did not start"
    }
}

UNBOUND_PID=""
# start_unbound ANCHOR_FILE: a fresh unbound (empty cache) trusting ANCHOR_FILE, asking nsd only.
start_unbound() {
    if [[ -n "$UNBOUND_PID" ]]; then iop_stop_pid "$UNBOUND_PID"; fi
    cat >"$DNS/unbound.conf" <<EOF
server:
    interface: 127.0.0.1@$UNBOUND_PORT
    port: $UNBOUND_PORT
    do-ip6: no
    do-daemonize: no
    num-threads: 1
    username: ""
    chroot: ""
    directory: "$DNS"
    pidfile: "$DNS/unbound.pid"
    use-syslog: no
    logfile: "$DNS/unbound.log"
    verbosity: 1
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "validator iterator"
    trust-anchor-file: "$1"
    local-zone: "test." nodefault
remote-control:
    control-enable: no
stub-zone:
    name: "."
    stub-addr: 127.0.0.1@$NSD_PORT
stub-zone:
    name: "test."
    stub-addr: 127.0.0.1@$NSD_PORT
stub-zone:
    name: "sec.test."
    stub-addr: 127.0.0.1@$NSD_PORT
stub-zone:
    name: "plain.test."
    stub-addr: 127.0.0.1@$NSD_PORT
EOF
    unbound-checkconf "$DNS/unbound.conf" >/dev/null || iop_die "unbound-checkconf rejects unbound.conf"
    iop_start unbound unbound -d -c "$DNS/unbound.conf"
    UNBOUND_PID=$IOP_PID
    iop_wait_port "$UNBOUND_PORT" 20 "$UNBOUND_PID" || iop_die "unbound did not start"
}

start_nsd

# ----- verdicts -------------------------------------------------------------------------------
# unbound_verdict NAME TYPE: secure|insecure|bogus|nxdomain-secure|nxdomain-insecure|
# nodata-secure|nodata-insecure|failed, from unbound's rcode, AD bit and answer count.
unbound_verdict() {
    local out rcode flags answers proof
    out=$(drill -D -p "$UNBOUND_PORT" "$1" @127.0.0.1 "$2" 2>&1) || true
    rcode=$(sed -n 's/.*rcode: \([A-Z]*\),.*/\1/p' <<<"$out" | head -n 1)
    flags=$(sed -n 's/^;; flags: \([^;]*\);.*/\1/p' <<<"$out" | head -n 1)
    answers=$(sed -n 's/.* ANSWER: \([0-9]*\),.*/\1/p' <<<"$out" | head -n 1)
    proof=insecure
    [[ " $flags " == *" ad "* ]] && proof=secure
    case "$rcode" in
    SERVFAIL) echo bogus ;;
    NXDOMAIN) echo "nxdomain-$proof" ;;
    NOERROR) if [[ ${answers:-0} -gt 0 ]]; then echo "$proof"; else echo "nodata-$proof"; fi ;;
    *) echo "failed($rcode)" ;;
    esac
}

# mxguard_verdict CONFIG NAME TYPE: the same classes, from `mxguard dns`'s first line.
mxguard_verdict() {
    local line
    line=$("$MXGUARD_BIN" dns "$2" "$3" --config "$1" 2>>"$IOP_TMP/mxguard-dns.log") || true
    line=${line%%$'\n'*}
    case "${line#*: }" in
    secure) echo secure ;;
    insecure) echo insecure ;;
    bogus*) echo bogus ;;
    "NXDOMAIN (secure)") echo nxdomain-secure ;;
    "NXDOMAIN (insecure)") echo nxdomain-insecure ;;
    "no records (secure)") echo nodata-secure ;;
    "no records (insecure)") echo nodata-insecure ;;
    *) echo "failed(${line#*: })" ;;
    esac
}

# The questions, and the verdict expected with the anchors at the root, at test. (the
# parent) and at sec.test. (the zone). A name outside every anchored zone is insecure (RFC 4035
# §4.3: no anchor says it is signed). A name error in test. rests on an Opt-Out NSEC3 and so
# is not proven (RFC 5155 §9.2); sec.test.'s NSEC3 chain has no Opt-Out, the root has NSEC.
QUESTIONS=(
    "mx.sec.test. A secure secure secure"
    "sec.test. MX secure secure secure"
    "mx.sec.test. AAAA nodata-secure nodata-secure nodata-secure"
    "nothere.sec.test. A nxdomain-secure nxdomain-secure nxdomain-secure"
    "mx.test. A secure secure insecure"
    "test. MX secure secure insecure"
    "mx.test. TXT nodata-secure nodata-secure nodata-insecure"
    "nothere.test. A nxdomain-insecure nxdomain-insecure nxdomain-insecure"
    "forged.test. A bogus bogus insecure"
    "mx.plain.test. A insecure insecure insecure"
    "plain.test. MX insecure insecure insecure"
    "nothere. A nxdomain-secure nxdomain-insecure nxdomain-insecure"
    "test. DS secure insecure insecure"
)

# anchor_config LABEL SCOPE LINES...: an anchor file with LINES (SCOPE: root, test or sec, the
# column of QUESTIONS that holds the expected verdicts), unbound and mxguard on it, and every
# question to both.
anchor_config() {
    local label=$1 scope=$2 file="$DNS/anchors-$1" conf="$IOP_TMP/mxguard-$1.toml"
    shift 2
    printf '%s\n' "$@" >"$file"
    cat >"$conf" <<EOF
hostname = "mxguard.local.test"
data_dir = "$IOP_TMP/var-$label"
[dns]
nameservers = ["127.0.0.1:$NSD_PORT"]
dnssec = "validate"
trust_anchor_file = "$file"
timeout = "3s"
EOF
    start_unbound "$file"
    local q name type root test sec want got_u got_m bad=""
    for q in "${QUESTIONS[@]}"; do
        read -r name type root test sec <<<"$q"
        case $scope in
        root) want=$root ;;
        test) want=$test ;;
        *) want=$sec ;;
        esac
        got_u=$(unbound_verdict "$name" "$type")
        got_m=$(mxguard_verdict "$conf" "$name" "$type")
        if [[ $got_u != "$want" || $got_m != "$want" ]]; then
            bad+=" [$name $type: want $want, unbound $got_u, mxguard $got_m]"
        fi
    done
    if [[ -z $bad ]]; then
        ok "anchor $label: ${#QUESTIONS[@]} questions, unbound and mxguard agree"
    else
        not_ok "anchor $label" "$bad"
        tail -n 20 "$IOP_TMP/mxguard-dns.log" >&2 || true
    fi
}

# Anchor lines: DNSKEY records from the .key files, DS records from the .ds files.
key_line() { grep -v '^;' "$DNS/$1.key"; }
ds_line() { cat "$DNS/$1.ds"; }

anchor_config zone-dnskey sec "$(key_line "$SEC_KSK")"
anchor_config zone-ds sec "$(ds_line "$SEC_KSK")"
anchor_config parent-dnskey test "$(key_line "$TEST_KSK")"
anchor_config parent-ds test "$(ds_line "$TEST_KSK")"
anchor_config root-dnskey root "$(key_line "$ROOT_KSK")"
anchor_config root-ds root "$(ds_line "$ROOT_KSK")"
anchor_config several test "$(ds_line "$TEST_KSK")" "$(key_line "$SEC_KSK")"

# ----- rollover -------------------------------------------------------------------------------
# The anchored KSK of sec.test. signs a new ZSK, and the old ZSK is gone: names validate with
# the new key (the key set is fetched and checked again).
NEW_ZSK=$(keygen -a ECDSAP256SHA256 sec.test.)
write_sec "$NEW_ZSK"
start_nsd
anchor_config rollover-zone-dnskey sec "$(key_line "$SEC_KSK")"
anchor_config rollover-parent-ds test "$(ds_line "$TEST_KSK")"

echo "private_anchors: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
