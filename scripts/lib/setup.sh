# Shared set-up for the bench commands: source it from a script in scripts/.
#
#   . "$(dirname "$0")/lib/setup.sh"
#   setup_root_check; setup_packages; setup_venv; setup_bench; setup_dockerd
#   setup_podman   # scripts/test only: a private Podman API service
#
# setup_dockerd starts a Docker engine only when none answers, and registers
# an EXIT trap that stops that one engine (by PID) again; an engine it did not
# start is never touched. The caller's cwd must be the repository root.
# scripts/test, scripts/demo and scripts/bench all prepare the machine here.

SETUP_NAME=${SETUP_NAME:-$(basename "$0")}
BENCH_DIR=${BENCH_DIR:-$PWD/.bench}
DOCKERD_PID=""
PODMAN_PID=""
PODMAN_SOCKET=""

say() { printf '%s: %s\n' "$SETUP_NAME" "$*" >&2; }
die() { say "error: $*"; exit 1; }

setup_root_check() {
    [ "$(id -u)" = 0 ] || die "run as root: the bench starts dockerd and writes cgroup device rules"
}

setup_packages() {
    local pkg missing=()
    # debootstrap builds the systemd test image; the rest build the bench.
    # podman: the second engine the live tests run against.
    for pkg in docker.io podman busybox-static gcc make pkg-config libsystemd-dev debootstrap procps \
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
    trap _setup_stop_engines EXIT
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

# ---- Podman: a private API service, the second engine of the live tests ----
#
# Everything it writes stays under $PODMAN_DIR: its own containers.conf
# (CONTAINERS_CONF) and storage.conf (CONTAINERS_STORAGE_CONF), so the
# machine's configuration, storage and events log are never read or touched.
# Podman 4.3 reads CDI specs only from /etc/cdi and /var/run/cdi (it has no
# --cdi-spec-dir): the tests write gpuwatchd-bench-<pid>-*.json specs to
# /var/run/cdi and remove them; set-up removes those whose writer is gone.
PODMAN_DIR=$BENCH_DIR/podman
CDI_DIR=/var/run/cdi
CDI_PREFIX=gpuwatchd-bench-

_setup_stop_podman() {
    if [ -n "$PODMAN_PID" ] && kill -0 "$PODMAN_PID" 2>/dev/null; then
        say "stopping the podman service this script started (pid $PODMAN_PID)"
        kill -TERM "$PODMAN_PID"
        for _ in $(seq 1 100); do
            kill -0 "$PODMAN_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$PODMAN_PID" 2>/dev/null && kill -KILL "$PODMAN_PID"
        # Podman's overlay driver bind-mounts its storage onto itself and leaves
        # it: undone here, so the checkout can be moved or removed afterwards.
        local overlay="$PODMAN_DIR/storage/overlay"
        if awk -v m="$overlay" '$2 == m {found=1} END {exit !found}' /proc/mounts; then
            umount "$overlay" 2>/dev/null || say "could not unmount $overlay"
        fi
    fi
    [ -z "$PODMAN_SOCKET" ] || rm -f "$PODMAN_SOCKET"
    return 0
}

_setup_stop_engines() {
    _setup_stop_podman
    _setup_stop_dockerd
}

# The conf files, rewritten every run (cheap; a changed layout takes effect).
_setup_podman_conf() {
    local nofile nproc hard
    mkdir -p "$PODMAN_DIR/events" "$PODMAN_DIR/tmp" "$PODMAN_DIR/networks" "$PODMAN_DIR/volumes"
    # Rootful Podman's default rlimits exceed this sandbox's hard limits and
    # runc then refuses to start containers: stay at or below ours.  Soft and
    # hard are equal: Podman 4.3 swaps a differing pair on the compat API.
    nofile=4096
    hard=$(ulimit -Hn)
    [ "$hard" != unlimited ] && [ "$hard" -lt "$nofile" ] && nofile=$hard
    nproc=4096
    hard=$(ulimit -Hu)
    [ "$hard" != unlimited ] && [ "$hard" -lt "$nproc" ] && nproc=$hard
    # No systemd runs here (cgroupfs), nor journald: events go to a file of our own.
    cat > "$PODMAN_DIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PODMAN_DIR/events/events.log"
tmp_dir = "$PODMAN_DIR/tmp"
volume_path = "$PODMAN_DIR/volumes"

[network]
network_config_dir = "$PODMAN_DIR/networks"
EOF
    cat > "$PODMAN_DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/storage"
runroot = "$PODMAN_DIR/run"
EOF
}

_setup_podman_answers() {
    [ -S "$PODMAN_SOCKET" ] || return 1
    python3 - "$PODMAN_SOCKET" 2>/dev/null <<'EOF'
import socket, sys
with socket.socket(socket.AF_UNIX) as s:
    s.settimeout(2)
    s.connect(sys.argv[1])
    s.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
    sys.exit(0 if b" 200 " in s.recv(64) else 1)
EOF
}

# Starts `podman system service --time 0` (without it the service exits after
# 5 s idle) on a socket of this run's own, and exports its URL as
# GPUWATCHD_TEST_PODMAN_HOST, with CONTAINERS_CONF and CONTAINERS_STORAGE_CONF
# for the tests' `podman --url` commands.  Stopped by its PID at exit.
setup_podman() {
    local log start=$SECONDS spec writer
    command -v podman >/dev/null || die "podman is not installed (setup_packages installs it)"
    _setup_podman_conf
    export CONTAINERS_CONF=$PODMAN_DIR/containers.conf
    export CONTAINERS_STORAGE_CONF=$PODMAN_DIR/storage.conf
    # One socket per run: two runs from this checkout share the storage, as
    # two podman commands do, but never a service.
    PODMAN_SOCKET=$PODMAN_DIR/api-$$.sock
    log=$PODMAN_DIR/service.log
    for spec in "$CDI_DIR/$CDI_PREFIX"*.json; do
        [ -e "$spec" ] || continue
        writer=$(basename "$spec" .json | cut -d- -f3)
        kill -0 "$writer" 2>/dev/null || rm -f "$spec"
    done
    trap _setup_stop_engines EXIT
    # In Asia/Tokyo, as the field report's host: Podman writes inspect and log
    # times in its local time with the offset (+09:00), Docker always in UTC.
    TZ=Asia/Tokyo podman system service --time 0 "unix://$PODMAN_SOCKET" >>"$log" 2>&1 &
    PODMAN_PID=$!
    for _ in $(seq 1 150); do
        _setup_podman_answers && break
        kill -0 "$PODMAN_PID" 2>/dev/null || break
        sleep 0.2
    done
    if ! _setup_podman_answers; then
        tail -n 20 "$log" >&2 || true
        die "the podman service could not be started (see $log)"
    fi
    export GPUWATCHD_TEST_PODMAN_HOST=unix://$PODMAN_SOCKET
    say "podman $(podman --version | awk '{print $3}') answers on $PODMAN_SOCKET" \
        "(set-up: $(( SECONDS - start )) s)"
}
