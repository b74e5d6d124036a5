#!/usr/bin/env bash
# Socketmap policy look-ups per second: mxguard's policy service ([policy_service]) against
# postfix-mta-sts-resolver (from PyPI, in a venv), same domains, same client, same machine,
# one after the other in the same run.
#
# Usage:  bench/socketmap.sh [-n DOMAINS] [-c CLIENTS] [-r ROUNDS] [-d DNSSEC]
#           -n  MTA-STS domains (default 1000), and as many domains without a policy
#           -c  parallel clients (default 4)
#           -r  rounds over the domains for the cached figure (default 5)
#           -d  mxguard's [dns] dnssec: trust-ad (default: the AD bit of the local unbound, the
#               DANE-capable set-up) or off (no DNSSEC look-up, so no DANE answer: the
#               resolver's view of the world, for comparison)
#         MXGUARD_BIN=path  use this binary instead of `cargo build --release`
#         BENCH_VENV=dir    the venv for postfix-mta-sts-resolver (default target/bench-venv;
#                           made and filled with `pip install postfix-mta-sts-resolver[uvloop]`
#                           when it has no mta-sts-daemon)
#         IOP_KEEP=1        keep the temporary directory (configurations, logs, answers)
#
# What it does: the script runs itself in a private network and mount namespace (unshare):
# loopback only, its own /etc/resolv.conf (postfix-mta-sts-resolver reads DNS through the
# system resolver, c-ares), so nothing leaves the machine. In there:
#   DNS     unbound on 127.0.0.1:53 serving bench.test. from local-data: for each i, the MTA-STS
#           domain dI.bench.test (MX mx-dI.bench.test, `_mta-sts` TXT `v=STSv1; id=1`,
#           mta-sts.dI.bench.test → 127.0.0.1) and the domain pI.bench.test without a policy
#           (MX only); TTLs of an hour. unbound is restarted (its cache emptied) before each
#           service's turn.
#   HTTPS   nginx on 127.0.0.1:443 serving one policy file for every mta-sts.dI.bench.test
#           (`mode: enforce`, `mx: *.bench.test`), certificates from a private CA (100 names
#           each), which both services trust (mxguard: delivery.extra_ca_files; the resolver:
#           SSL_CERT_FILE).
#   client  Postfix's own socketmap client: CLIENTS `postmap -q - socketmap:inet:…:postfix`
#           processes, each sending its share of the keys over one connection, one request at
#           a time, as Postfix's smtp(8) processes do.
#   mxguard (release build, default log level) `dns.dnssec = "trust-ad"` against the unbound
#           (the DANE-capable Postfix model; -d), its own MTA-STS cache; postfix-mta-sts-resolver
#           with its defaults (internal cache, timeout 4 s, require_sni), uvloop.
# For each service, four figures (look-ups per second over all clients), each with the
# service's own CPU time per look-up (user + system of its process, from /proc: what the
# service costs, whatever the client and the other servers cost):
#   uncached   the first look-up of each MTA-STS domain: DNS, then the policy fetched over HTTPS
#   cached     ROUNDS more look-ups of the same domains (the resolver answers from its cache
#              without DNS for 60 s, its cache_grace; mxguard checks the domain's MX and the
#              TXT id through its DNS caches on every look-up, as delivery does)
#   no policy  the domains without MTA-STS, their DNS already cached by a first pass
#   no look-up ROUNDS × DOMAINS keys `.dI.bench.test` (a parent-domain probe, which both answer
#              NOTFOUND at once, without any look-up): the socketmap exchange alone, so the
#              most any service reaches with this client on this machine
# Every answer is checked: each MTA-STS domain must get `secure match=.bench.test
# servername=hostname`, each other domain nothing.
#
# Needs root (unshare), postfix (postmap), unbound, nginx, openssl, python3 with venv.
set -euo pipefail

# shellcheck source=tests/interop/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tests/interop/lib.sh"

DOMAINS=1000
CLIENTS=4
ROUNDS=5
DNSSEC=trust-ad
while getopts "n:c:r:d:" opt; do
    case $opt in
    n) DOMAINS=$OPTARG ;;
    c) CLIENTS=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    d) DNSSEC=$OPTARG ;;
    *) exit 2 ;;
    esac
done

if [[ -z "${IOP_IN_NETNS:-}" ]]; then
    iop_is_root || iop_die "run as root (unshare)"
    iop_require postfix:postmap unbound:unbound nginx:nginx openssl:openssl \
        util-linux:unshare iproute2:ip
    BENCH_VENV="${BENCH_VENV:-$IOP_ROOT/target/bench-venv}"
    if [[ ! -x "$BENCH_VENV/bin/mta-sts-daemon" ]]; then
        iop_log "installing postfix-mta-sts-resolver into $BENCH_VENV"
        python3 -m venv "$BENCH_VENV"
        "$BENCH_VENV/bin/pip" install -q 'postfix-mta-sts-resolver[uvloop]' ||
            iop_die "pip install postfix-mta-sts-resolver failed"
    fi
    if [[ -z "${MXGUARD_BIN:-}" ]]; then
        iop_log "building mxguard (cargo build --release)"
        (cd "$IOP_ROOT" && cargo build --release --quiet --bin mxguard) || iop_die "cargo build failed"
        MXGUARD_BIN="${CARGO_TARGET_DIR:-$IOP_ROOT/target}/release/mxguard"
    fi
    MXGUARD_BIN="$(realpath "$MXGUARD_BIN")"
    BENCH_VENV="$(realpath "$BENCH_VENV")"
    export MXGUARD_BIN BENCH_VENV
    exec env IOP_IN_NETNS=1 unshare --net --mount --fork -- \
        "$BASH" "${BASH_SOURCE[0]}" -n "$DOMAINS" -c "$CLIENTS" -r "$ROUNDS" -d "$DNSSEC"
fi
ip link set lo up
iop_init

TLS="$IOP_TMP/tls"
WWW="$IOP_TMP/www"
KEYS="$IOP_TMP/keys"
MXGUARD_SERVICE=127.0.0.1:8461
RESOLVER_SERVICE=127.0.0.1:8462
ANSWER="secure match=.bench.test servername=hostname"
mkdir -p "$WWW/.well-known" "$KEYS" "$IOP_TMP/pf"
: >"$IOP_TMP/pf/main.cf" # postmap's configuration directory: defaults only
names() { seq -f "$1%04g.bench.test" 1 "$DOMAINS"; }

# ----- DNS ------------------------------------------------------------------------------------
{
    cat <<EOF
server:
    interface: 127.0.0.1
    port: 53
    do-ip6: no
    do-daemonize: no
    num-threads: 1
    username: ""
    chroot: ""
    directory: "$IOP_TMP"
    use-syslog: no
    logfile: "$IOP_TMP/unbound-run.log"
    access-control: 127.0.0.0/8 allow
    local-zone: "test." nodefault
    local-zone: "bench.test." static
    # Its SOA goes with each NXDOMAIN, so that negative answers are cached (RFC 2308) as
    # they are on the Internet.
    local-data: "bench.test. 3600 IN SOA ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 3600"
EOF
    for d in $(names d); do
        printf '    local-data: "%s. 3600 IN MX 10 mx-%s."\n' "$d" "$d"
        printf '    local-data: "mx-%s. 3600 IN A 127.0.0.2"\n' "$d"
        printf "    local-data: '_mta-sts.%s. 3600 IN TXT \"v=STSv1; id=1\"'\n" "$d"
        printf '    local-data: "mta-sts.%s. 3600 IN A 127.0.0.1"\n' "$d"
    done
    for d in $(names p); do
        printf '    local-data: "%s. 3600 IN MX 10 mx-%s."\n' "$d" "$d"
        printf '    local-data: "mx-%s. 3600 IN A 127.0.0.2"\n' "$d"
    done
    printf 'remote-control:\n    control-enable: no\n'
} >"$IOP_TMP/unbound.conf"
unbound-checkconf "$IOP_TMP/unbound.conf" >/dev/null || iop_die "unbound-checkconf rejects the configuration"
UNBOUND_PID=""
# A fresh unbound: empty cache.
restart_unbound() {
    if [[ -n "$UNBOUND_PID" ]]; then iop_stop_pid "$UNBOUND_PID"; fi
    iop_start unbound unbound -d -c "$IOP_TMP/unbound.conf"
    UNBOUND_PID=$IOP_PID
    iop_wait_port 53 30 "$UNBOUND_PID" || iop_die "unbound did not start"
}
printf 'nameserver 127.0.0.1\n' >"$IOP_TMP/resolv.conf"
mount --bind "$IOP_TMP/resolv.conf" /etc/resolv.conf

# ----- HTTPS: the policy hosts ----------------------------------------------------------------
iop_tls_ca "$TLS"
printf 'version: STSv1\nmode: enforce\nmx: *.bench.test\nmax_age: 86400\n' \
    >"$WWW/.well-known/mta-sts.txt"
SERVERS=""
mapfile -t POLICY_HOSTS < <(names d | sed 's/^/mta-sts./')
for ((i = 0; i < ${#POLICY_HOSTS[@]}; i += 100)); do
    chunk=("${POLICY_HOSTS[@]:i:100}")
    san=$(printf 'DNS:%s,' "${chunk[@]}")
    iop_tls_server_cert "$TLS" "hosts$i" "${san%,}"
    SERVERS+="
    server {
        listen 127.0.0.1:443 ssl;
        server_name ${chunk[*]};
        ssl_certificate $TLS/hosts$i.pem;
        ssl_certificate_key $TLS/hosts$i.key;
        root $WWW;
        default_type text/plain;
    }"
done
cat >"$IOP_TMP/nginx.conf" <<EOF
worker_processes 1;
error_log $IOP_TMP/nginx-error.log;
pid $IOP_TMP/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    server_names_hash_max_size 65536;
    server_names_hash_bucket_size 128;
    $SERVERS
}
EOF
iop_start nginx nginx -c "$IOP_TMP/nginx.conf" -g 'daemon off;'
iop_wait_port 443 20 "$IOP_PID" || iop_die "nginx did not start: $(cat "$IOP_TMP/nginx.log")"

# ----- the key files: each client's share -----------------------------------------------------
split_keys() { # NAME PREFIX [LEAD]: KEYS/NAME.0 … NAME.(CLIENTS-1), round robin, each key LEAD…
    names "$2" | awk -v n="$CLIENTS" -v out="$KEYS/$1" -v lead="${3:-}" \
        '{ print lead $0 > (out "." (NR % n)) }'
}
split_keys sts d
split_keys none p
split_keys probe d .

# run_clients SERVICE SET ROUNDS LABEL: CLIENTS postmap processes, each ROUNDS times over its
# share of SET; prints the elapsed seconds; answers in $IOP_TMP/LABEL.out.N.
run_clients() {
    local service=$1 set=$2 rounds=$3 label=$4 c start end pids=()
    for ((c = 0; c < CLIENTS; c++)); do
        for ((r = 0; r < rounds; r++)); do cat "$KEYS/$set.$c"; done >"$KEYS/$label.in.$c"
    done
    start=$(date +%s.%N)
    for ((c = 0; c < CLIENTS; c++)); do
        postmap -c "$IOP_TMP/pf" -q - "socketmap:inet:$service:postfix" \
            <"$KEYS/$label.in.$c" >"$IOP_TMP/$label.out.$c" 2>"$IOP_TMP/$label.err.$c" &
        pids+=($!)
    done
    for c in "${pids[@]}"; do wait "$c" || true; done
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f\n", e - s }'
}

# check LABEL EXPECTED_LINES: every answer line is the MTA-STS answer, and there are as many.
check() {
    local label=$1 want=$2 got bad
    got=$(cat "$IOP_TMP/$label".out.* | wc -l)
    bad=$(cat "$IOP_TMP/$label".out.* | cut -f2- | grep -vxcF "$ANSWER" || true)
    [[ $got -eq $want && $bad -eq 0 ]] || {
        cat "$IOP_TMP/$label".err.* >&2
        iop_die "$label: $got answers ($bad wrong), want $want"
    }
}

declare -A RATE CPU
TICK=$(getconf CLK_TCK)
# cpu_ticks PID: user + system CPU of the process (all its threads) and of its children.
cpu_ticks() {
    local pid total=0
    for pid in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
# phase NAME PID SERVICE SET ROUNDS KIND EXPECTED: one timed pass; sets RATE and CPU (µs of the
# service's CPU per look-up) for NAME-KIND, checks the answers.
phase() {
    local name=$1 pid=$2 service=$3 set=$4 rounds=$5 kind=$6 want=$7 n secs before
    n=$((DOMAINS * rounds))
    before=$(cpu_ticks "$pid")
    secs=$(run_clients "$service" "$set" "$rounds" "$name-$kind")
    CPU[$name-$kind]=$(awk -v t=$(($(cpu_ticks "$pid") - before)) -v hz="$TICK" -v n="$n" \
        'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
    check "$name-$kind" "$want"
    RATE[$name-$kind]=$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
}
# measure NAME SERVICE PID: the four figures for the service listening at SERVICE.
measure() {
    local name=$1 service=$2 pid=$3
    phase "$name" "$pid" "$service" sts 1 uncached "$DOMAINS"
    phase "$name" "$pid" "$service" sts "$ROUNDS" cached $((DOMAINS * ROUNDS))
    run_clients "$service" none 1 "$name-none-warm" >/dev/null
    phase "$name" "$pid" "$service" none "$ROUNDS" none 0
    phase "$name" "$pid" "$service" probe "$ROUNDS" probe 0
    iop_log "$name: uncached ${RATE[$name-uncached]}/s, cached ${RATE[$name-cached]}/s," \
        "no policy ${RATE[$name-none]}/s, no look-up ${RATE[$name-probe]}/s"
}

# ----- postfix-mta-sts-resolver ---------------------------------------------------------------
restart_unbound
cat >"$IOP_TMP/mta-sts-daemon.yml" <<EOF
host: 127.0.0.1
port: ${RESOLVER_SERVICE##*:}
reuse_port: true
cache:
  type: internal
  options:
    cache_size: $((DOMAINS * 4))
default_zone:
  strict_testing: false
  timeout: 4
  require_sni: true
EOF
iop_start resolver env SSL_CERT_FILE="$TLS/ca.pem" "$BENCH_VENV/bin/mta-sts-daemon" \
    -c "$IOP_TMP/mta-sts-daemon.yml"
RESOLVER_PID=$IOP_PID
iop_wait_port "${RESOLVER_SERVICE##*:}" 30 "$RESOLVER_PID" ||
    iop_die "mta-sts-daemon did not start: $(tail -n 20 "$IOP_TMP/resolver.log")"
VERSION=$("$BENCH_VENV/bin/pip" show postfix-mta-sts-resolver 2>/dev/null | sed -n 's/^Version: //p')
measure resolver "$RESOLVER_SERVICE" "$RESOLVER_PID"
iop_stop_pid "$RESOLVER_PID"

# ----- mxguard --------------------------------------------------------------------------------
restart_unbound
mkdir -p "$IOP_TMP/mxguard-var"
cat >"$IOP_TMP/mxguard.toml" <<EOF
hostname = "mxguard.bench.test"
data_dir = "$IOP_TMP/mxguard-var"

[[listener]]
address = "127.0.0.1:10025"

[dns]
nameservers = ["127.0.0.1:53"]
dnssec = "$DNSSEC"

[delivery]
extra_ca_files = ["$TLS/ca.pem"]

[policy_service]
listen = "$MXGUARD_SERVICE"
EOF
iop_mxguard_start "$IOP_TMP/mxguard.toml" 10025
iop_wait_port "${MXGUARD_SERVICE##*:}" 10 "$MXGUARD_PID" || iop_die "the policy service does not listen"
measure mxguard "$MXGUARD_SERVICE" "$MXGUARD_PID"
RSS=$(awk '/VmHWM/ { printf "%.1f MB", $2 / 1024 }' "/proc/$MXGUARD_PID/status" 2>/dev/null || echo "?")
iop_stop_pid "$MXGUARD_PID"

# ----- figures --------------------------------------------------------------------------------
ratio() { awk -v a="${RATE[mxguard-$1]}" -v b="${RATE[resolver-$1]}" 'BEGIN { printf "%.1f", a / b }'; }
cpu_ratio() { awk -v a="${CPU[mxguard-$1]}" -v b="${CPU[resolver-$1]}" 'BEGIN { printf "%.1f", b / a }'; }
row() {
    printf '%-30s %9s %9s %6s× %9s %9s %6s×\n' "$2" "${RATE[mxguard-$1]}" "${RATE[resolver-$1]}" \
        "$(ratio "$1")" "${CPU[mxguard-$1]}" "${CPU[resolver-$1]}" "$(cpu_ratio "$1")"
}
echo
echo "socketmap look-ups: $DOMAINS MTA-STS domains and $DOMAINS without, $CLIENTS clients (postmap -q -), $ROUNDS rounds for cached; mxguard dns.dnssec = $DNSSEC; resolver: postfix-mta-sts-resolver ${VERSION:-?}"
printf '%-30s %27s %27s\n' "" "look-ups per second" "service CPU µs per look-up"
printf '%-30s %9s %9s %7s %9s %9s %7s\n' "" "mxguard" "resolver" "ratio" "mxguard" "resolver" "ratio"
row uncached "uncached (DNS + policy fetch)"
row cached "cached policy"
row none "no policy (DNS cached)"
row probe "no look-up (.domain probe)"
echo "mxguard peak RSS: $RSS"
