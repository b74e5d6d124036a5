#!/usr/bin/env bash
# Interop: the files in deploy/ are accepted by the programs that read them.
#
#   deploy/mxguard.toml      `mxguard check-config` accepts it, and it names every key that
#                            src/config.rs defines (the example must document them all)
#   deploy/mxguard.service   `systemd-analyze verify` finds nothing but the missing binary
#                            (skipped when systemd-analyze is absent)
#   deploy/status_filter     Postfix's own pcre: table reads it and maps the sample statuses
#                            as DESIGN.md says (skipped without postfix-pcre)
#   deploy/postfix/*.snippet the master.cf snippet is used verbatim by postfix_relay.sh; here
#                            `postconf` parses the main.cf snippet in a scratch directory
set -euo pipefail

# shellcheck source=tests/interop/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
iop_init
iop_mxguard_bin
DEPLOY="$IOP_ROOT/deploy"
FAILED=0
fail() {
    echo "not ok - $1"
    FAILED=$((FAILED + 1))
}

# --- mxguard.toml ---------------------------------------------------------------------------
if "$MXGUARD_BIN" check-config --config "$DEPLOY/mxguard.toml" >"$IOP_TMP/check.log" 2>&1; then
    echo "ok - mxguard check-config accepts deploy/mxguard.toml"
else
    cat "$IOP_TMP/check.log" >&2
    fail "mxguard check-config rejects deploy/mxguard.toml"
fi

# Every `pub field: Type` of the configuration structs must appear as a key in the example,
# active or commented out ("# key =" or "key ="). Serde renames listed here.
missing=""
while read -r key; do
    case "$key" in listeners) key=listener ;; routes) key=route ;; esac
    if ! grep -qE "^(# )?(\[\[)?\[?$key( =|\]|\]\])" "$DEPLOY/mxguard.toml"; then
        missing+=" $key"
    fi
done < <(sed -n 's/^ *pub \([a-z_]*\): .*/\1/p' "$IOP_ROOT/src/config.rs" "$IOP_ROOT"/src/config/*.rs | sort -u)
if [[ -z "$missing" ]]; then
    echo "ok - deploy/mxguard.toml documents every configuration key"
else
    fail "deploy/mxguard.toml does not mention:$missing"
fi

# --- mxguard.service ------------------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
    mkdir -p "$IOP_TMP/unit"
    cp "$DEPLOY/mxguard.service" "$IOP_TMP/unit/"
    systemd-analyze verify --man=no "$IOP_TMP/unit/mxguard.service" >"$IOP_TMP/verify.log" 2>&1 || true
    if grep -v "/usr/local/bin/mxguard is not executable" "$IOP_TMP/verify.log" | grep -q .; then
        cat "$IOP_TMP/verify.log" >&2
        fail "systemd-analyze verify complains about deploy/mxguard.service"
    else
        echo "ok - systemd-analyze verify deploy/mxguard.service"
    fi
else
    echo "ok - deploy/mxguard.service # SKIP systemd-analyze not installed"
fi

# --- status_filter --------------------------------------------------------------------------
# Postfix's tools need a main.cf; an empty one in a scratch directory keeps them away from
# the system's (which may not even exist when the package was installed unconfigured).
mkdir -p "$IOP_TMP/emptycf"
: >"$IOP_TMP/emptycf/main.cf"
if command -v postmap >/dev/null && postconf -c "$IOP_TMP/emptycf" -m 2>/dev/null | grep -qx pcre; then
    check_rule() {
        local got
        got=$(postmap -c "$IOP_TMP/emptycf" -q "$1" "pcre:$DEPLOY/status_filter" 2>&1 || true)
        if [[ "$got" == "$2" ]]; then
            echo "ok - status_filter: '$1' -> '${2:-(unchanged)}'"
        else
            fail "status_filter: '$1' gave '$got', want '${2:-(no match)}'"
        fi
    }
    check_rule "4.7.4 TLS is required, but was not offered by host mx.example.net[192.0.2.1]" \
        "5.7.4 TLS is required, but was not offered by host mx.example.net[192.0.2.1]"
    check_rule "4.7.0 TLS is required, but host mx.example.net[192.0.2.1] refused to start TLS: 454 4.7.0 TLS not available" \
        "5.7.0 TLS is required, but host mx.example.net[192.0.2.1] refused to start TLS: 454 4.7.0 TLS not available"
    check_rule "4.7.5 Server certificate not verified" "5.7.5 Server certificate not verified"
    check_rule "4.7.0 TLSA lookup error for mx.example.net:25" ""
    check_rule "4.4.1 Connection timed out" ""
else
    echo "ok - deploy/status_filter # SKIP postfix-pcre not installed"
fi

# --- postfix main.cf snippet ----------------------------------------------------------------
if command -v postconf >/dev/null; then
    mkdir -p "$IOP_TMP/pfconf"
    cp "$DEPLOY/postfix/main.cf.snippet" "$IOP_TMP/pfconf/main.cf"
    : >"$IOP_TMP/pfconf/master.cf"
    if [[ "$(postconf -c "$IOP_TMP/pfconf" -h relayhost 2>&1)" == "[127.0.0.1]:10025" ]]; then
        echo "ok - postconf reads deploy/postfix/main.cf.snippet"
    else
        fail "postconf does not read relayhost from deploy/postfix/main.cf.snippet"
    fi
fi

[[ $FAILED -eq 0 ]]
