#!/usr/bin/env bash
# The test command: tests/run.sh
#
#   1. installs what the interop scripts need when it is missing (as root, Debian/Ubuntu:
#      postfix, postfix-pcre, swaks, unbound, ldnsutils, nsd, nginx, openssl, redis-server) without starting their system
#      services; not root and missing: the interop scripts are skipped with a message, the
#      Rust tests still run;
#   2. cargo test --workspace --all-targets (hermetic: loopback only, no system packages);
#   3. every tests/interop/*.sh script, against the debug binary built for step 2;
#   4. a short run of every fuzz target (fuzz/run.sh, $FUZZ_SECONDS seconds each, default
#      20) when the nightly toolchain is installed; cargo-fuzz is installed if missing. Without
#      nightly it prints "fuzz: SKIPPED (…)". A crash fails the run and names its input.
#
# Exits non-zero when anything failed. The last line is the summary over the interop scripts:
# "N passed, N failed" (the Rust tests report their own counts above it; a failing
# `cargo test` counts as one failure there too).
#
# Environment: SKIP_CARGO_TEST=1 skips step 2; INTEROP="postfix_relay" runs only the named
# scripts; MXGUARD_BIN overrides the binary the interop scripts use; SKIP_FUZZ=1 skips step 4.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '\n=== %s\n' "$*"; }

PASSED=0
FAILED=0
SKIPPED=0
FAILED_NAMES=()

# ----- 1. tools -------------------------------------------------------------------------------
need_packages() {
    local missing=()
    command -v postfix >/dev/null || missing+=(postfix)
    command -v smtp-sink >/dev/null || missing+=(postfix)
    command -v swaks >/dev/null || missing+=(swaks)
    # dane_unbound: a validating resolver, a zone signer (and drill), an authoritative server.
    command -v unbound >/dev/null || missing+=(unbound)
    command -v ldns-signzone >/dev/null || missing+=(ldnsutils)
    command -v drill >/dev/null || missing+=(ldnsutils)
    command -v nsd >/dev/null || missing+=(nsd)
    # postfix_socketmap: the MTA-STS policy hosts.
    command -v nginx >/dev/null || missing+=(nginx)
    # tests/tls_protocols.rs: real OpenSSL peers (s_server with TLS 1.0, s_client).
    command -v openssl >/dev/null || missing+=(openssl)
    # tests/fleet*.rs: a real Redis shared by two nodes (started by the tests on a loopback
    # port; the package's own service is kept from starting, like unbound's and nsd's).
    command -v redis-server >/dev/null || missing+=(redis-server)
    # postconf needs a main.cf; the package may have none ("No configuration"), so ask about
    # map types against an empty one.
    local cf
    cf="$(mktemp -d)"
    : >"$cf/main.cf"
    if ! postconf -c "$cf" -m 2>/dev/null | grep -qx pcre; then
        missing+=(postfix-pcre)
    fi
    rm -rf "$cf"
    printf '%s\n' "${missing[@]}" | sort -u | grep . || true
}

INTEROP_OK=1
mapfile -t MISSING < <(need_packages)
if [[ ${#MISSING[@]} -gt 0 ]]; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing ${MISSING[*]}"
        # No configuration: the package must not set up (or start) a system mail server;
        # the interop scripts run their own private Postfix instances.
        if command -v debconf-set-selections >/dev/null; then
            echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
        fi
        # Nor may unbound or nsd start as system services (unbound would prime the root from
        # the Internet and take over resolv.conf): a policy-rc.d that denies every start,
        # unless the machine already has one.
        POLICY_RC=""
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            POLICY_RC=/usr/sbin/policy-rc.d
            printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
            chmod 0755 "$POLICY_RC"
        fi
        INSTALL_RC=0
        { apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${MISSING[@]}" >/dev/null; } || INSTALL_RC=$?
        if [[ -n "$POLICY_RC" ]]; then rm -f "$POLICY_RC"; fi
        [[ $INSTALL_RC -eq 0 ]] || exit "$INSTALL_RC"
    else
        echo "interop tests SKIPPED: missing ${MISSING[*]} and not root (or no apt-get);" \
            "install them (apt-get install postfix postfix-pcre swaks unbound ldnsutils nsd) to run tests/interop/"
        INTEROP_OK=0
    fi
fi
if [[ "$(id -u)" -ne 0 && $INTEROP_OK -eq 1 ]]; then
    echo "interop tests SKIPPED: they start private Postfix instances, which needs root"
    INTEROP_OK=0
fi

# ----- 2. cargo test --------------------------------------------------------------------------
CARGO_OK=1
if [[ "${SKIP_CARGO_TEST:-}" != 1 ]]; then
    log "cargo test --workspace --all-targets"
    if ! cargo test --workspace --all-targets; then
        CARGO_OK=0
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("cargo test")
    fi
fi

# ----- 3. interop -----------------------------------------------------------------------------
if [[ $INTEROP_OK -eq 1 ]]; then
    if [[ -z "${MXGUARD_BIN:-}" ]]; then
        log "cargo build --bin mxguard"
        cargo build --bin mxguard
        export MXGUARD_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/mxguard"
    fi
    for script in tests/interop/*.sh; do
        name="$(basename "$script" .sh)"
        [[ "$name" == lib ]] && continue
        if [[ -n "${INTEROP:-}" && " $INTEROP " != *" $name "* ]]; then
            continue
        fi
        log "interop: $name"
        # Each script gets a hard time limit so a hang cannot stall CI.
        if timeout --kill-after=30 900 bash "$script"; then
            PASSED=$((PASSED + 1))
        else
            FAILED=$((FAILED + 1))
            FAILED_NAMES+=("$name")
        fi
    done
else
    SKIPPED=1
fi

# ----- 4. fuzz --------------------------------------------------------------------------------
if [[ "${SKIP_FUZZ:-}" == 1 ]]; then
    echo "fuzz: SKIPPED (SKIP_FUZZ=1)"
elif ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: SKIPPED (no nightly toolchain: rustup toolchain install nightly)"
else
    log "fuzz: every target, ${FUZZ_SECONDS:-20} s each"
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        log "installing cargo-fuzz"
        cargo install cargo-fuzz --locked || echo "fuzz: cannot install cargo-fuzz"
    fi
    if timeout --kill-after=30 2400 bash fuzz/run.sh; then
        if cargo +nightly fuzz --version >/dev/null 2>&1; then PASSED=$((PASSED + 1)); fi
    else
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("fuzz")
    fi
fi

log "summary"
[[ $CARGO_OK -eq 1 && "${SKIP_CARGO_TEST:-}" != 1 ]] && echo "cargo test: passed"
[[ $SKIPPED -eq 1 ]] && echo "interop: skipped (see above)"
[[ ${#FAILED_NAMES[@]} -gt 0 ]] && echo "failed: ${FAILED_NAMES[*]}"
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
