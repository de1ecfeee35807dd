#!/usr/bin/env bash
# Installs what the Laravel integration tests need (tests/fixtures/laravel): the PHP CLI, the
# phpredis extension and Debian's php-laravel-framework (Laravel 8.83). Idempotent: it does
# nothing, and prints nothing, when all three are already there. Debian/Ubuntu only (apt-get).
set -euo pipefail

LARAVEL_AUTOLOAD=/usr/share/php/Illuminate/autoload.php

have_all() {
    command -v php >/dev/null 2>&1 &&
        php -r 'exit(extension_loaded("redis") ? 0 : 1);' >/dev/null 2>&1 &&
        [ -f "$LARAVEL_AUTOLOAD" ]
}

have_all && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# apt-get's output only matters when it fails.
if ! {
    "${sudo[@]}" apt-get update -q &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q php-cli php-redis php-laravel-framework
} >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-php.sh: apt-get failed (output above)" >&2
    exit 1
fi

if ! have_all; then
    echo "install-php.sh: installed, but php, its redis extension or $LARAVEL_AUTOLOAD is still missing" >&2
    exit 1
fi
