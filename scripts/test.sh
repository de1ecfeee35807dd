#!/usr/bin/env bash
# Runs the whole test suite, on a fresh machine too: installs what the tests need when it is
# missing (redis-server, chromium for the status page, and php-cli, php-redis,
# php-laravel-framework for the Laravel tests),
# from Debian's packages. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
# The status page is tested in headless Chromium.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# The TLS test makes its certificates with openssl; the signature test runs python3.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing ${missing[*]} ..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ -x scripts/install-php.sh ]; then
  scripts/install-php.sh
fi

# cargo prints one summary per test binary, the doc tests last (often 0 of them); close with one
# line that counts every test that ran.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
