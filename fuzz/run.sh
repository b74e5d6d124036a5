#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for $FUZZ_SECONDS seconds (default 20) on its
# corpus (fuzz/corpus/<target>/, seeded with the committed seed-* files), printing one line
# per target:  `<target>: N execs, cov C, ok|CRASH`.  Exits non-zero if any target crashed
# (the input is in fuzz/artifacts/<target>/, the log in fuzz/target/fuzz-logs/<target>.log).
# Without the nightly toolchain or cargo-fuzz it prints `fuzz: SKIPPED (why)` and exits 0.
#
#   FUZZ_SECONDS=60 fuzz/run.sh              # all targets, 60 s each
#   fuzz/run.sh smtp_command tlsa            # just these
#   FUZZ_RSS_MB=1024 (default)               # libFuzzer's memory limit per target
set -euo pipefail

cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-20}"
rss_mb="${FUZZ_RSS_MB:-1024}"

if ! command -v cargo >/dev/null 2>&1; then
    echo "fuzz: SKIPPED (cargo is not installed)"
    exit 0
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: SKIPPED (no nightly toolchain: rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: SKIPPED (cargo-fuzz is not installed: cargo install cargo-fuzz --locked)"
    exit 0
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

nice -n 10 cargo +nightly fuzz build

logs=target/fuzz-logs
mkdir -p "$logs"
failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="$logs/$t.log"
    status=ok
    if ! nice -n 10 cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -print_final_stats=1 \
        >"$log" 2>&1; then
        status=CRASH
        failed=1
    fi
    # libFuzzer's final statistics, else the last status line (`#N ... cov: C ...`).
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ -z "$execs" ]; then
        execs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true)
    fi
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | tr -dc '0-9' || true)
    echo "$t: ${execs:-?} execs, cov ${cov:-?}, $status"
    if [ "$status" = CRASH ]; then
        grep -m 1 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | sed 's/^/    /' || true
        grep -m 1 -E "Test unit written to" "$log" | sed 's/^/    /' || true
    fi
done
exit "$failed"
