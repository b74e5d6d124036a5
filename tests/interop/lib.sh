# shellcheck shell=bash
# Helpers for the interop scripts (tests/interop/*.sh) and bench/relay.sh: free loopback
# ports, bounded waits, Postfix's smtp-sink, a PRIVATE Postfix instance in a temporary
# directory, and mxguard itself — each started process recorded by PID and stopped at exit.
#
# Source it, then call iop_init. Everything listens on 127.0.0.1 only. The system's own
# Postfix configuration (/etc/postfix) is only read (postfix-files, dynamicmaps), never changed.
#
# Environment:
#   MXGUARD_BIN   the mxguard binary (default: target/debug/mxguard, built if missing)
#   IOP_KEEP=1    keep the temporary directory (logs, spools, mailboxes) even on success

IOP_TMP=""
IOP_PIDS=()
IOP_POSTFIX_DIRS=()
IOP_PORTS_TAKEN=" "
IOP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

iop_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
iop_die() {
    iop_log "FAIL: $*"
    exit 1
}

iop_init() {
    IOP_TMP="$(mktemp -d "${TMPDIR:-/tmp}/mxguard-interop.XXXXXX")"
    # Postfix daemons and smtp-sink drop privileges and must be able to reach their files.
    chmod 0755 "$IOP_TMP"
    trap iop_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# Stops what we started: private Postfix instances first (they deliver to the others), then
# every recorded PID, newest first. Bounded: TERM, up to 5 s, then KILL.
iop_cleanup() {
    local rc=$? dir pid i
    trap - EXIT INT TERM
    for dir in "${IOP_POSTFIX_DIRS[@]}"; do
        iop_postfix_stop "$dir"
    done
    for ((i = ${#IOP_PIDS[@]} - 1; i >= 0; i--)); do
        iop_stop_pid "${IOP_PIDS[$i]}"
    done
    if [[ -n "$IOP_TMP" && -d "$IOP_TMP" ]]; then
        if [[ $rc -ne 0 || "${IOP_KEEP:-}" == 1 ]]; then
            iop_log "logs and spools kept in $IOP_TMP"
        else
            rm -rf "$IOP_TMP"
        fi
    fi
    exit "$rc"
}

iop_stop_pid() {
    local pid=$1 n
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((n = 0; n < 50; n++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    iop_log "pid $pid did not stop on TERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

iop_is_root() { [[ "$(id -u)" -eq 0 ]]; }

# iop_require PACKAGE:COMMAND…: each COMMAND must be on PATH. Missing ones are installed from
# their Debian PACKAGE as tests/run.sh does (root and apt-get only, no system service started:
# a policy-rc.d denies every start while apt-get runs); otherwise the script fails.
iop_require() {
    local pair absent=() policy="" rc=0
    for pair in "$@"; do
        command -v "${pair#*:}" >/dev/null || absent+=("${pair%%:*}")
    done
    [[ ${#absent[@]} -eq 0 ]] && return 0
    if ! iop_is_root || ! command -v apt-get >/dev/null; then
        iop_die "missing ${absent[*]} (apt-get install ${absent[*]}; tests/run.sh does it as root)"
    fi
    iop_log "installing ${absent[*]}"
    # A postfix package must not set up (or start) a system mail server.
    if command -v debconf-set-selections >/dev/null; then
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    fi
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
    fi
    { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${absent[@]}" >/dev/null; } || rc=$?
    if [[ -n "$policy" ]]; then rm -f "$policy"; fi
    [[ $rc -eq 0 ]] || iop_die "apt-get install ${absent[*]} failed"
}

# Is something accepting connections on 127.0.0.1:PORT?
iop_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Prints a port that nothing listens on and that this run has not handed out yet.
iop_free_port() {
    local port n
    for ((n = 0; n < 200; n++)); do
        port=$((20000 + RANDOM % 40000))
        [[ "$IOP_PORTS_TAKEN" == *" $port "* ]] && continue
        iop_port_open "$port" && continue
        IOP_PORTS_TAKEN+="$port "
        echo "$port"
        return 0
    done
    iop_die "no free port found"
}

# iop_wait_port PORT SECONDS [PID]: until PORT accepts connections; fails early if PID died.
iop_wait_port() {
    local port=$1 secs=$2 pid=${3:-} n
    for ((n = 0; n < secs * 10; n++)); do
        iop_port_open "$port" && return 0
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            iop_log "process $pid exited before listening on $port"
            return 1
        fi
        sleep 0.1
    done
    iop_log "nothing listens on 127.0.0.1:$port after ${secs}s"
    return 1
}

# iop_wait_for SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds or time is up.
iop_wait_for() {
    local secs=$1 n
    shift
    for ((n = 0; n < secs * 5; n++)); do
        "$@" && return 0
        sleep 0.2
    done
    return 1
}

# iop_start NAME COMMAND...: runs COMMAND in the background, output to $IOP_TMP/NAME.log,
# records its PID in IOP_PID and in the list stopped at exit.
iop_start() {
    local name=$1
    shift
    "$@" >"$IOP_TMP/$name.log" 2>&1 &
    IOP_PID=$!
    IOP_PIDS+=("$IOP_PID")
}

# ----- mxguard ------------------------------------------------------------------------------

# Sets MXGUARD_BIN, building the debug binary when none is given.
iop_mxguard_bin() {
    if [[ -z "${MXGUARD_BIN:-}" ]]; then
        MXGUARD_BIN="${CARGO_TARGET_DIR:-$IOP_ROOT/target}/debug/mxguard"
        iop_log "building mxguard (cargo build)"
        (cd "$IOP_ROOT" && cargo build --quiet --bin mxguard) || iop_die "cargo build failed"
    fi
    [[ -x "$MXGUARD_BIN" ]] || iop_die "no mxguard binary at $MXGUARD_BIN"
}

# iop_mxguard_start CONFIG PORT: starts `mxguard serve`, waits for PORT. Sets MXGUARD_PID and
# MXGUARD_LOG.
iop_mxguard_start() {
    local config=$1 port=$2
    iop_mxguard_bin
    "$MXGUARD_BIN" check-config --config "$config" >/dev/null || iop_die "mxguard rejects $config"
    MXGUARD_LOG="$IOP_TMP/mxguard.log"
    iop_start mxguard env RUST_LOG="${RUST_LOG:-info}" "$MXGUARD_BIN" serve --config "$config"
    MXGUARD_PID=$IOP_PID
    iop_wait_port "$port" 30 "$MXGUARD_PID" || {
        tail -n 30 "$MXGUARD_LOG" >&2 || true
        iop_die "mxguard did not start"
    }
}

# ----- smtp-sink ----------------------------------------------------------------------------

# The user smtp-sink drops to when run as root (it refuses to run as root otherwise).
iop_sink_user_args() {
    if iop_is_root; then
        echo "-u nobody"
    fi
}

# iop_sink_start NAME PORT DUMPDIR [smtp-sink options…]: an MX on 127.0.0.1:PORT that dumps
# each message into DUMPDIR (one file per message). Sets IOP_PID.
iop_sink_start() {
    local name=$1 port=$2 dump=$3
    shift 3
    mkdir -p "$dump"
    if iop_is_root; then chown nobody "$dump"; fi
    # shellcheck disable=SC2046
    iop_start "$name" smtp-sink $(iop_sink_user_args) -4 -h "$name.test" -d "$dump/msg." "$@" \
        "127.0.0.1:$port" 128
    iop_wait_port "$port" 10 "$IOP_PID" || iop_die "smtp-sink $name did not start"
}

# ----- a private Postfix instance -----------------------------------------------------------

# iop_postfix_start DIR SMTPD_PORT RELAYHOST [main.cf line…]: a Postfix whose config, queue,
# data and mailboxes all live under DIR, with one smtpd on 127.0.0.1:SMTPD_PORT, relaying
# everything not local to RELAYHOST. The domain local.test is local: all its addresses share
# the mbox file DIR/mail/mbox. Logs go to DIR/maillog. Never touches /etc/postfix.
iop_postfix_start() {
    local dir=$1 port=$2 relayhost=$3
    shift 3
    mkdir -p "$dir/conf" "$dir/queue" "$dir/data" "$dir/mail"
    # The master's lock and the daemons' data live in data_directory, owned by mail_owner;
    # virtual(8) delivers as uid/gid 65534 (nobody).
    chown postfix "$dir/data"
    chown 65534:65534 "$dir/mail"
    cat >"$dir/conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
maillog_file_prefixes = $dir
maillog_file = $dir/maillog
myhostname = postfix.local.test
mydomain = local.test
myorigin = local.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = $relayhost
smtp_dns_support_level = disabled
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = local.test
virtual_mailbox_base = $dir/mail
virtual_mailbox_maps = static:mbox
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 100
biff = no
append_dot_mydomain = no
delay_warning_time = 0
smtpd_banner = \$myhostname ESMTP private test instance
EOF
    local line
    for line in "$@"; do
        echo "$line" >>"$dir/conf/main.cf"
    done
    # Only the services a relay needs (tlsmgr for an smtpd given a certificate), none chrooted
    # (so no copies of /etc files are needed).
    cat >"$dir/conf/master.cf" <<EOF
127.0.0.1:$port inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    # The forceenc transport exactly as deploy/postfix/master.cf.snippet ships it.
    grep -v '^#' "$IOP_ROOT/deploy/postfix/master.cf.snippet" | grep -v '^[[:space:]]*$' \
        >>"$dir/conf/master.cf"
    IOP_POSTFIX_DIRS+=("$dir")
    postfix -c "$dir/conf" check >"$dir/check.log" 2>&1 || {
        cat "$dir/check.log" >&2
        iop_die "postfix check failed for $dir"
    }
    postfix -c "$dir/conf" start >"$dir/start.log" 2>&1 || {
        cat "$dir/start.log" >&2
        tail -n 20 "$dir/maillog" >&2 2>/dev/null || true
        iop_die "postfix start failed for $dir"
    }
    iop_wait_port "$port" 30 || {
        tail -n 30 "$dir/maillog" >&2 2>/dev/null || true
        iop_die "private postfix did not listen on $port"
    }
}

iop_postfix_stop() {
    local dir=$1 pid="" n
    [[ -f "$dir/conf/main.cf" ]] || return 0
    if [[ -f "$dir/queue/pid/master.pid" ]]; then
        pid="$(tr -dc '0-9' <"$dir/queue/pid/master.pid")"
    fi
    timeout 20 postfix -c "$dir/conf" stop >/dev/null 2>&1 || true
    [[ -n "$pid" ]] || return 0
    for ((n = 0; n < 100; n++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    iop_log "postfix master $pid still running; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

# iop_postfix_queue_empty DIR: nothing left in the instance's active/incoming/deferred queues.
iop_postfix_queue_empty() {
    local dir=$1 q
    for q in incoming active deferred maildrop hold; do
        if [[ -n "$(find "$dir/queue/$q" -type f 2>/dev/null | head -n 1)" ]]; then
            return 1
        fi
    done
    return 0
}

# ----- counting what a sink saw (bench/relay.sh, bench/relay_tls.sh) -----------------------

# iop_sink_counter LOG FIELD: the last value of FIELD in the running counter that `smtp-sink -c`
# writes to LOG ("sess=S quit=Q mesg=M\r"): `mesg` counts messages received, `sess` counts
# sessions (TCP connections) that have ENDED — smtp-sink increments it at disconnect, so a
# connection still open is not in it yet. 0 before the first line.
iop_sink_counter() {
    local n
    n=$(tail -c 512 "$1" 2>/dev/null | tr '\r' '\n' | grep -o "$2=[0-9]*" | tail -n 1 | cut -d= -f2)
    echo "${n:-0}"
}

# iop_port_conns PORT: TCP connections the server on 127.0.0.1:PORT still holds (established,
# or closed by the client but not yet by the server).
iop_port_conns() {
    ss -Htn state established state close-wait "( sport = :$1 )" 2>/dev/null | wc -l
}

# iop_wait_port_idle PORT SECONDS: until the server on PORT holds no connection (the clients
# have closed theirs and the server has seen it); fails when time is up.
iop_wait_port_idle() {
    local port=$1 secs=$2 n
    for ((n = 0; n < secs * 10; n++)); do
        [[ $(iop_port_conns "$port") -eq 0 ]] && return 0
        sleep 0.1
    done
    iop_log "127.0.0.1:$port still holds $(iop_port_conns "$port") connections after ${secs}s"
    return 1
}

# ----- a private CA and server certificates -------------------------------------------------

# iop_tls_ca DIR: a private CA in DIR: DIR/ca.pem (certificate), DIR/ca.key. Key type from
# IOP_TLS_KEY: `ec` (P-256, the default) or `rsa` (2048 bits).
iop_tls_ca() {
    local dir=$1
    mkdir -p "$dir"
    # shellcheck disable=SC2046
    openssl req -x509 -new -nodes $(iop_tls_keyopts) -keyout "$dir/ca.key" -out "$dir/ca.pem" \
        -days 30 -subj "/O=mxguard interop/CN=mxguard interop CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" >"$dir/openssl.log" 2>&1 || {
        cat "$dir/openssl.log" >&2
        iop_die "openssl: CA certificate failed"
    }
}

# iop_tls_server_cert DIR NAME SAN: a server key and certificate signed by DIR's CA, for NAME
# (the subject CN) with subjectAltName SAN in openssl's syntax ("DNS:mx.test,IP:127.0.0.1"):
# DIR/NAME.key, DIR/NAME.pem; checked with `openssl verify` against DIR/ca.pem.
iop_tls_server_cert() {
    local dir=$1 name=$2 san=$3 usage=digitalSignature
    [[ "${IOP_TLS_KEY:-ec}" == rsa ]] && usage+=",keyEncipherment"
    printf '%s\n' "subjectAltName = $san" "basicConstraints = critical,CA:FALSE" \
        "keyUsage = critical,$usage" "extendedKeyUsage = serverAuth" >"$dir/$name.ext"
    # shellcheck disable=SC2046
    { openssl req -new -nodes $(iop_tls_keyopts) -keyout "$dir/$name.key" \
        -out "$dir/$name.csr" -subj "/CN=$name" &&
        openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
            -CAcreateserial -days 30 -sha256 -extfile "$dir/$name.ext" -out "$dir/$name.pem" &&
        openssl verify -CAfile "$dir/ca.pem" "$dir/$name.pem"; } >>"$dir/openssl.log" 2>&1 || {
        tail -n 20 "$dir/openssl.log" >&2
        iop_die "openssl: certificate for $name failed"
    }
    chmod 0644 "$dir/ca.pem" "$dir/$name.pem"
}

iop_tls_keyopts() {
    case "${IOP_TLS_KEY:-ec}" in
    ec) echo "-newkey ec -pkeyopt ec_paramgen_curve:P-256" ;;
    rsa) echo "-newkey rsa:2048" ;;
    *) iop_die "IOP_TLS_KEY must be ec or rsa, not ${IOP_TLS_KEY}" ;;
    esac
}

# ----- more of a private Postfix instance ---------------------------------------------------

# iop_postfix_add_services DIR MASTER.CF-LINE…: adds services to the master.cf of the running
# instance in DIR and reloads it (e.g. tlsproxy, which smtp_tls_connection_reuse needs).
iop_postfix_add_services() {
    local dir=$1 line
    shift
    for line in "$@"; do
        echo "$line" >>"$dir/conf/master.cf"
    done
    if ! { postfix -c "$dir/conf" check >"$dir/check.log" 2>&1 &&
        postfix -c "$dir/conf" reload >"$dir/reload.log" 2>&1; }; then
        cat "$dir/check.log" "$dir/reload.log" >&2 2>/dev/null
        iop_die "postfix reload failed for $dir"
    fi
}

# iop_postfix_set DIR NAME=VALUE…: sets main.cf parameters of the running instance in DIR in
# place (postconf -e: no duplicate entries, so no "overriding earlier entry" warnings) and
# reloads it; for a parameter iop_postfix_start already writes, such as myhostname.
iop_postfix_set() {
    local dir=$1
    shift
    if ! { postconf -c "$dir/conf" -e "$@" >"$dir/postconf.log" 2>&1 &&
        postfix -c "$dir/conf" reload >"$dir/reload.log" 2>&1; }; then
        cat "$dir/postconf.log" "$dir/reload.log" >&2 2>/dev/null
        iop_die "postconf -e $* failed for $dir"
    fi
}

# iop_postfix_log_lines DIR: lines in the instance's maillog so far (a mark for iop_postfix_log_since).
iop_postfix_log_lines() {
    local n
    n=$(wc -l <"$1/maillog" 2>/dev/null) || n=0
    echo "${n:-0}"
}

# iop_postfix_log_since DIR MARK: the maillog lines after the first MARK.
iop_postfix_log_since() {
    tail -n "+$(($2 + 1))" "$1/maillog" 2>/dev/null
}

# iop_nsd_conf DIR PORT ZONE=FILE...: writes DIR/nsd.conf for an nsd on 127.0.0.1:PORT, in
# the foreground, everything (zones, state, logs) in DIR, serving each ZONE from DIR/FILE.
iop_nsd_conf() {
    local dir=$1 port=$2 zone
    shift 2
    cat >"$dir/nsd.conf" <<NSD
server:
    ip-address: 127.0.0.1@$port
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "$dir"
    database: ""
    zonelistfile: "$dir/nsd-zone.list"
    xfrdfile: "$dir/nsd-xfrd.state"
    xfrdir: "$dir"
    pidfile: "$dir/nsd.pid"
    logfile: "$dir/nsd.log"
    verbosity: 1
remote-control:
    control-enable: no
NSD
    for zone in "$@"; do
        printf 'zone:\n    name: "%s"\n    zonefile: "%s"\n' "${zone%%=*}" "${zone#*=}" >>"$dir/nsd.conf"
    done
}

# Scenario bookkeeping shared by the scripts: `ok NAME`, `not_ok NAME WHY`, and the counts in
# PASSED and FAILED for the script's summary line.
PASSED=0
FAILED=0
ok() {
    echo "ok - $1"
    PASSED=$((PASSED + 1))
}
not_ok() {
    echo "not ok - $1: $2"
    FAILED=$((FAILED + 1))
}
