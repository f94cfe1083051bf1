#!/usr/bin/env bash
# Install the benchmark's peers, idempotently, and say which are available.
#
#   redis-server, task-spooler  Debian packages, installed with apt-get only
#                               when missing and only when we are root
#   huey, rq, redis (client)    pip, into the separate virtualenv .venv-bench,
#                               so the project's own .venv stays clean
#
# Never fails the caller: a peer that cannot be installed is reported as
# unavailable and `python -m bench.run` prints a "skipped" row for it.
set -u

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
BENCH_VENV="${BENCH_VENV:-.venv-bench}"
PIP_PACKAGES="huey rq redis"

have() { command -v "$1" >/dev/null 2>&1; }

apt_updated=0
apt_install() {
    # apt_install PACKAGE: install one Debian package; refresh the lists once
    # and retry if the first attempt fails (a new machine has empty lists).
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
    if apt-get install -y -q --no-install-recommends "$package" >/dev/null 2>&1; then
        return 0
    fi
    if [ "$apt_updated" = 0 ]; then
        apt_updated=1
        apt-get update -q >/dev/null 2>&1 || true
        apt-get install -y -q --no-install-recommends "$package" >/dev/null 2>&1 && return 0
    fi
    echo "setup: apt-get install $package failed" >&2
    return 1
}

# Debian ships task-spooler's client as `tsp`; upstream calls it `ts`.
tsp_command() {
    if have tsp; then echo tsp; elif have ts && ts -V >/dev/null 2>&1; then echo ts; fi
}

have redis-server || apt_install redis-server
[ -n "$(tsp_command)" ] || apt_install task-spooler

venv_python="$BENCH_VENV/bin/python"
venv_ok() { "$venv_python" -c 'import huey, rq, redis' >/dev/null 2>&1; }
if ! venv_ok; then
    if [ ! -x "$venv_python" ]; then
        "$PYTHON" -m venv "$BENCH_VENV" || echo "setup: could not create $BENCH_VENV" >&2
    fi
    if [ -x "$venv_python" ]; then
        "$venv_python" -m pip install --quiet --disable-pip-version-check $PIP_PACKAGES \
            || echo "setup: pip install $PIP_PACKAGES into $BENCH_VENV failed" >&2
    fi
fi

# One line per peer.
venv_version() {
    "$venv_python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null
}
if venv_ok; then
    echo "peer huey-sqlite: available (huey $(venv_version huey), in $BENCH_VENV)"
else
    echo "peer huey-sqlite: unavailable (huey not importable in $BENCH_VENV)"
fi
if venv_ok && have redis-server; then
    redis_version="$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
    echo "peer rq-redis: available (rq $(venv_version rq), redis-server $redis_version)"
else
    echo "peer rq-redis: unavailable (needs redis-server and rq in $BENCH_VENV)"
fi
if [ -n "$(tsp_command)" ]; then
    echo "peer task-spooler: available (command $(tsp_command))"
else
    echo "peer task-spooler: unavailable (no tsp or ts command)"
fi
exit 0
