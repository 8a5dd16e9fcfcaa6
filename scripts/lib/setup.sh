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
    setup_venv_for "${PYTHON:-python3}" .venv
}

# The supported Pythons (pyproject's requires-python and classifiers agree).
SUPPORTED_PYTHONS="3.10 3.11 3.12 3.13"

# Print one interpreter path per supported version found on this machine,
# pyenv's versions directory first, then PATH; GPUWATCHD_PYTHONS (paths,
# space-separated) replaces the search.
setup_find_pythons() {
    local v candidate root
    if [ -n "${GPUWATCHD_PYTHONS:-}" ]; then
        printf '%s\n' $GPUWATCHD_PYTHONS
        return 0
    fi
    root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    for v in $SUPPORTED_PYTHONS; do
        for candidate in "$root"/versions/"$v".*/bin/python"$v" "$(command -v "python$v" || true)"; do
            if [ -x "$candidate" ] && "$candidate" -c 'import venv' 2>/dev/null; then
                echo "$candidate"
                break
            fi
        done
    done
}

# setup_venv_for PYTHON DIR: DIR holds a venv of PYTHON with the project and
# its test extras, refreshed only when pyproject.toml changed.
setup_venv_for() {
    local python=$1 dir=$2 stamp want
    if [ ! -x "$dir/bin/python" ]; then
        say "creating $dir ($("$python" -V 2>&1))"
        "$python" -m venv "$dir"
    fi
    stamp=$dir/.gpuwatchd-test-stamp
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        say "installing the project with its test extras into $dir"
        "$dir/bin/python" -m pip install -q -e '.[test]'
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
