#!/usr/bin/env bash
# One entry point for a fresh Debian bookworm machine, run as root:
#   ./run.sh stack [gpuacct-stack options]   install everything, then run the whole stack
#   ./run.sh test  [pytest options]          install everything, then lint, type-check, check the
#                                            import contract and test
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(python3 python3-venv prometheus prometheus-alertmanager influxdb util-linux passwd procps)
# Only for the tests and benchmarks: the browser the page is tested in, the HTTP load tool, and
# a Compose parser for compose/, a C compiler for the stand-in libamd_smi.so, libdcmi.so and
# framework libraries the tests build, Pango, which WeasyPrint prints PDF statements with, and
# a Docker engine with a static busybox, the one image the container tests run (none can be
# pulled).
TEST_APT_PACKAGES=(chromium fonts-dejavu-core wrk docker-compose libpango-1.0-0 libpangoft2-1.0-0 slapd ldap-utils victoria-metrics postgresql gcc libc6-dev docker.io busybox-static)
VENV=.venv

install_debian_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> apt-get install ${missing[*]}"
    # Debian's packages start their own services on install; gpuacct runs its own instances on
    # other ports, so keep the package scripts from starting daemons during this install only.
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        guard=yes
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

install_venv() {
    local extra=$1 stamp="$VENV/.installed-$1"
    [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
        echo "==> pip install -e .$extra into $VENV (versions from constraints.txt)"
        "$VENV/bin/python" -m pip install -q -c constraints.txt --upgrade pip
        "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".$extra"
        touch "$stamp"
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    stack)
        install_debian_packages "${APT_PACKAGES[@]}"
        install_venv ""
        exec "$VENV/bin/gpuacct-stack" "$@"
        ;;
    test)
        install_debian_packages "${APT_PACKAGES[@]}" "${TEST_APT_PACKAGES[@]}"
        install_venv "[test]"
        echo "==> ruff check"; "$VENV/bin/ruff" check .
        echo "==> mypy"; "$VENV/bin/mypy"
        echo "==> lint-imports (the import contract in pyproject.toml)"; "$VENV/bin/lint-imports"
        echo "==> pytest"
        set +e
        # Two workers, each in a PID namespace of its own (tests/fixtures/workers.py):
        # GPUACCT_TEST_WORKERS=0 runs the tests one after another in this process.
        "$VENV/bin/python" -m pytest -n "${GPUACCT_TEST_WORKERS:-2}" --dist worksteal "$@"
        rc=$?
        set -e
        if [ $rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi
        exit $rc
        ;;
    *)
        echo "usage: $0 stack [options] | test [pytest options]" >&2
        exit 2
        ;;
esac
