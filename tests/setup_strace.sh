#!/usr/bin/env bash
# Make strace available to the test of the order of durable writes, idempotently.
#
#   strace  Debian's package, installed with apt-get only when strace is
#           missing and only when we are root.
#
# Never fails the caller: without strace that test skips and says why.
set -u

# shellcheck source=tests/apt_install.sh
. "$(dirname "$0")/apt_install.sh"

have strace || apt_install strace || true
if ! have strace; then
    echo "strace: unavailable, the durable-order test will skip (install strace, or run as root)"
    exit 0
fi
echo "strace: $(strace -V 2>/dev/null | head -1)"
exit 0
