#!/bin/sh
# Runs every cargo-fuzz target for SECONDS seconds each (default 60), one after the other,
# and prints the exec count libFuzzer reports for each. Installs cargo-fuzz if it is absent.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# cargo-fuzz needs nightly flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them (the ASan runtime ships with it). Crashes land in
# fuzz/artifacts/<target>/; reproduce one with `fuzz/run.sh repro <target> <file>`.
set -eu
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if [ "${1:-}" = "repro" ]; then
    exec cargo fuzz run "$2" "$3"
fi
secs="${1:-60}"
[ $# -gt 0 ] && shift
targets="$*"
[ -n "$targets" ] || targets="$(cargo fuzz list)"
# Each target gets its own corpus directory so later runs resume from what was found.
status=0
for t in $targets; do
    mkdir -p "corpus/$t"
    log="$(mktemp)"
    if cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=65536 \
        -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
    fi
    execs="$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')"
    corpus="$(ls "corpus/$t" | wc -l)"
    echo "$t: $result, ${secs}s, ${execs:-?} execs, corpus $corpus inputs"
    [ "$result" = ok ] || tail -40 "$log"
    rm -f "$log"
done
exit $status
