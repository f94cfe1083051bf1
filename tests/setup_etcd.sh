#!/usr/bin/env bash
# Make an etcd server available to the tests, idempotently, and say which.
#
#   etcd-server  Debian's package (etcd 3.4), installed with apt-get only when
#                no etcd is found and only when we are root. Where systemd
#                runs, the package starts its own service on port 2379; when
#                this script installed the package it stops and disables that
#                service again: the tests start members of their own on free
#                loopback ports with their data under pytest's tmp_path.
#
# JOBQUEUE_ETCD names another server binary to use instead. etcd 3.5.0 to
# 3.5.5 are refused by the tests (they can lose data after a SIGKILL).
# Never fails the caller: without etcd the etcd tests skip and say why.
set -u

# shellcheck source=tests/apt_install.sh
. "$(dirname "$0")/apt_install.sh"

binary="${JOBQUEUE_ETCD:-}"
if [ -z "$binary" ] && ! have etcd; then
    if apt_install etcd-server && [ -d /run/systemd/system ] && have systemctl; then
        systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
fi
[ -n "$binary" ] || binary="$(command -v etcd 2>/dev/null)"

if [ -z "$binary" ] || [ ! -x "$binary" ]; then
    echo "etcd: unavailable, the etcd tests will skip (install etcd-server, or run as root)"
    exit 0
fi
version="$("$binary" --version 2>/dev/null | sed -n 's/^etcd Version: //p')"
case "$version" in
    3.5.[0-5]) echo "etcd: $binary $version is refused by the tests (3.5.0-3.5.5 can lose data after SIGKILL)" ;;
    *) echo "etcd: $binary ${version:-(unknown version)}" ;;
esac
exit 0
