# Sourced by the tests' setup scripts: `have COMMAND` and `apt_install PACKAGE...`.
#
# apt_install installs Debian packages without questions, only when we are
# root and apt-get exists; it refreshes the package lists once and retries
# when the first attempt fails. It returns 1, saying why on stderr, when it
# cannot; it never exits the caller.

have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "setup: not root, cannot apt-get install $*" >&2
        return 1
    fi
    if ! have apt-get; then
        echo "setup: no apt-get on this machine, cannot install $*" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local options="-y -q --no-install-recommends -o Dpkg::Options::=--force-confold"
    # shellcheck disable=SC2086
    if apt-get install $options "$@" >/dev/null 2>&1; then
        return 0
    fi
    apt-get update -q >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    apt-get install $options "$@" >/dev/null 2>&1 && return 0
    echo "setup: apt-get install $* failed" >&2
    return 1
}
