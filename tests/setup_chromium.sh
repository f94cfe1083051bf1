#!/usr/bin/env bash
# Make a headless browser available to the dashboard tests, idempotently, and say which.
#
#   chromium, chromium-driver  Debian's packages, installed with apt-get only when
#                              either binary is missing and only when we are root.
#
# JOBQUEUE_CHROMIUM and JOBQUEUE_CHROMEDRIVER name other binaries to use instead.
# Never fails the caller: without them the browser tests skip and say why.
set -u

have() { command -v "$1" >/dev/null 2>&1; }

install_browser() {
    if [ "$(id -u)" != 0 ]; then
        echo "setup: not root, cannot apt-get install chromium chromium-driver" >&2
        return 1
    fi
    if ! have apt-get; then
        echo "setup: no apt-get on this machine, cannot install chromium" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local options="-y -q --no-install-recommends -o Dpkg::Options::=--force-confold"
    # shellcheck disable=SC2086
    if apt-get install $options chromium chromium-driver >/dev/null 2>&1; then
        return 0
    fi
    apt-get update -q >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    apt-get install $options chromium chromium-driver >/dev/null 2>&1 && return 0
    echo "setup: apt-get install chromium chromium-driver failed" >&2
    return 1
}

browser="${JOBQUEUE_CHROMIUM:-}"
driver="${JOBQUEUE_CHROMEDRIVER:-}"
if [ -z "$browser$driver" ] && ! { have chromium && have chromedriver; }; then
    install_browser || true
fi
[ -n "$browser" ] || browser="$(command -v chromium 2>/dev/null)"
[ -n "$driver" ] || driver="$(command -v chromedriver 2>/dev/null)"

if [ -z "$browser" ] || [ -z "$driver" ]; then
    echo "chromium: unavailable, the dashboard browser tests will skip (install chromium and chromium-driver, or run as root)"
    exit 0
fi
echo "chromium: $("$browser" --version 2>/dev/null | head -1), $("$driver" --version 2>/dev/null | cut -d' ' -f1-2)"
exit 0
