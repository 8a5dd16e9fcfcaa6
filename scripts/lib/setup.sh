# Shared set-up for the bench commands: source it from a script in scripts/.
#
#   . "$(dirname "$0")/lib/setup.sh"
#   setup_root_check; setup_packages; setup_venv; setup_bench; setup_dockerd
#
# setup_dockerd starts a Docker engine only when none answers, and registers
# an EXIT trap that stops that one engine (by PID) again; an engine it did not
# start is never touched. The caller's cwd must be the repository root.
# scripts/test, scripts/demo and scripts/bench all prepare the machine here.

SETUP_NAME=${SETUP_NAME:-$(basename "$0")}
BENCH_DIR=${BENCH_DIR:-$PWD/.bench}
DOCKERD_PID=""

say() { printf '%s: %s\n' "$SETUP_NAME" "$*" >&2; }
die() { say "error: $*"; exit 1; }

setup_root_check() {
    [ "$(id -u)" = 0 ] || die "run as root: the bench starts dockerd and writes cgroup device rules"
}

setup_packages() {
    local pkg missing=()
    # debootstrap builds the systemd test image; the rest build the bench.
    for pkg in docker.io busybox-static gcc make pkg-config libsystemd-dev debootstrap procps \
               python3 python3-venv python3-dev; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

setup_venv() {
    local stamp want
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv"
        "${PYTHON:-python3}" -m venv .venv
    fi
    # Reinstall only when pyproject.toml changed since the last install.
    stamp=.venv/.gpuwatchd-test-stamp
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        say "installing the project with its test extras into .venv"
        .venv/bin/python -m pip install -q -e '.[test]'
        echo "$want" > "$stamp"
    fi
}

setup_bench() {
    mkdir -p "$BENCH_DIR"
    make -s -C tests/bench
}

_setup_stop_dockerd() {
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        say "stopping the dockerd this script started (pid $DOCKERD_PID)"
        kill -TERM "$DOCKERD_PID"
        for _ in $(seq 1 150); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -0 "$DOCKERD_PID" 2>/dev/null && kill -KILL "$DOCKERD_PID"
    fi
    return 0
}

_setup_engine_answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

setup_dockerd() {
    local log
    trap _setup_stop_dockerd EXIT
    if _setup_engine_answers; then
        return 0
    fi
    log=$BENCH_DIR/dockerd.log
    say "no Docker engine answers; starting dockerd (log: $log)"
    dockerd --iptables=false --bridge=none >>"$log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 1 300); do
        _setup_engine_answers && break
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 0.2
    done
    if ! _setup_engine_answers; then
        tail -n 20 "$log" >&2 || true
        die "the Docker engine could not be started (see $log)"
    fi
}
