#!/bin/sh
# What `make bench` needs beyond `make`: the Debian packages of the real workloads and of the
# load programs' build (apt-get, non-interactive, only what is missing; as root), and the
# `bench` extra of pyproject.toml (matplotlib, for the chart) in the virtualenv given as $1.
# None of it is a dependency of `make test`.
set -e
py=${1:-.venv/bin/python}
need=""
command -v gcc >/dev/null || need="$need gcc libc6-dev"
command -v unshare >/dev/null || need="$need util-linux"
command -v ip >/dev/null || need="$need iproute2"
command -v redis-server >/dev/null || need="$need redis-server"
command -v redis-benchmark >/dev/null || need="$need redis-tools"
command -v nginx >/dev/null || need="$need nginx-light"
command -v wrk >/dev/null || need="$need wrk"
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bench install-deps: apt-get install$need"
        apt-get update -qq
        # policy-rc.d or not, never leave the packages' own services running
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
        for svc in redis-server nginx; do
            if command -v service >/dev/null && service "$svc" status >/dev/null 2>&1; then
                service "$svc" stop >/dev/null 2>&1 || true
            fi
        done
    else
        echo "bench install-deps: missing$need (not root: the cases that need them are skipped)"
    fi
fi
# the bench extra, as pyproject.toml declares it (read from the installed package's metadata)
reqs=$(PYTHONSAFEPATH=1 "$py" -c 'import importlib.metadata as m, re
print(" ".join(re.sub(r"\s*;.*", "", r) for r in m.requires("mwcomms") or []
               if "extra == \"bench\"" in r))')
if [ -n "$reqs" ] && ! PYTHONSAFEPATH=1 "$py" -c "import matplotlib" 2>/dev/null; then
    echo "bench install-deps: pip install $reqs"
    "$py" -m pip install -q --disable-pip-version-check $reqs
fi
