#!/usr/bin/env bash
# Mutation testing of the delivery-critical modules, by hand (not in CI: every mutant rebuilds
# the router and runs tests; the whole set takes hours on 2 cores).
#
#   scripts/mutants.sh                          # every delivery-critical module, whole suite
#   scripts/mutants.sh src/commands/dlq.rs               # one file, whole suite
#   scripts/mutants.sh src/commands/dlq.rs -- --test stream_claim_and_dlq_replay
#                                               # one file, only the tests that cover it (fast)
#   MUTANTS_LIST=1 scripts/mutants.sh "src/sink/**"# list the mutants, build nothing
#
# A mutant that survives ("MISSED" in mutants.out/missed.txt) is a change of the product no test
# noticed: write the test that fails on it (apply the mutant with `cargo mutants --file F
# --re NAME --in-place`, watch the new test fail, `git checkout` the file) or, when the mutant
# is equivalent, exclude it in .cargo/mutants.toml with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo mutants --version >/dev/null 2>&1; then
    echo "cargo-mutants is missing: cargo install cargo-mutants --locked" >&2
    exit 2
fi
files=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    files+=(--file "$1")
    shift
done
if [ ${#files[@]} -eq 0 ]; then
    # Where a mutant means a message lost, duplicated, acknowledged early or never retried.
    for f in "src/sink/**/*.rs" "src/source/**/*.rs" src/engine/route.rs src/engine/rule.rs \
        "src/deadletter/*.rs" src/commands/dlq.rs; do
        files+=(--file "$f")
    done
fi
test_args=()
if [ $# -gt 0 ]; then
    shift
    test_args=(-- "$@")
fi
if [ -n "${MUTANTS_LIST:-}" ]; then
    exec cargo mutants --list ${MUTANTS_ARGS:-} "${files[@]}"
fi
if [ -n "${MUTANTS_IN_PLACE:-}" ]; then
    exec cargo mutants --in-place --no-shuffle ${MUTANTS_ARGS:-} "${files[@]}" "${test_args[@]}"
fi
# One job: the tests start Redis servers and routers, and the machine has 2 cores.
exec cargo mutants --jobs 1 --no-shuffle ${MUTANTS_ARGS:-} "${files[@]}" "${test_args[@]}"
