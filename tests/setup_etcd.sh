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

have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
    # apt_install PACKAGE: install one Debian package without questions;
    # refresh the package lists once and retry when the first attempt fails.
    local package="$1"
    if [ "$(id -u)" != 0 ]; then
        echo "setup: not root, cannot apt-get install $package" >&2
        return 1
    fi
    if ! have apt-get; then
        echo "setup: no apt-get on this machine, cannot install $package" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local options="-y -q --no-install-recommends -o Dpkg::Options::=--force-confold"
    # shellcheck disable=SC2086
    if apt-get install $options "$package" >/dev/null 2>&1; then
        return 0
    fi
    apt-get update -q >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    apt-get install $options "$package" >/dev/null 2>&1 && return 0
    echo "setup: apt-get install $package failed" >&2
    return 1
}

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
