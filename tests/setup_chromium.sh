#!/usr/bin/env bash
# Make a headless browser available to the dashboard tests, idempotently, and say which.
#
#   chromium, chromium-driver  Debian's packages, installed with apt-get only when
#                              either binary is missing and only when we are root.
#
# JOBQUEUE_CHROMIUM and JOBQUEUE_CHROMEDRIVER name other binaries to use instead.
# Never fails the caller: without them the browser tests skip and say why.
set -u

# shellcheck source=tests/apt_install.sh
. "$(dirname "$0")/apt_install.sh"

browser="${JOBQUEUE_CHROMIUM:-}"
driver="${JOBQUEUE_CHROMEDRIVER:-}"
if [ -z "$browser$driver" ] && ! { have chromium && have chromedriver; }; then
    apt_install chromium chromium-driver || true
fi
[ -n "$browser" ] || browser="$(command -v chromium 2>/dev/null)"
[ -n "$driver" ] || driver="$(command -v chromedriver 2>/dev/null)"

if [ -z "$browser" ] || [ -z "$driver" ]; then
    echo "chromium: unavailable, the dashboard browser tests will skip (install chromium and chromium-driver, or run as root)"
    exit 0
fi
echo "chromium: $("$browser" --version 2>/dev/null | head -1), $("$driver" --version 2>/dev/null | cut -d' ' -f1-2)"
exit 0
