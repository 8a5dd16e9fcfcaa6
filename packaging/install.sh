#!/usr/bin/env bash
# Install (or upgrade in place) gpuwatchd as a systemd service, from this working tree.
#
#   sudo packaging/install.sh [--wheel-dir DIR] [--no-start] [--with-host-fixes]
#
# What it does, in order:
#   1. a virtual environment in $PREFIX (default /opt/gpuwatchd) holding gpuwatchd
#      and its dependencies. systemd-python is published only as source: Debian's
#      python3-systemd is reused through --system-site-packages when installed,
#      else gcc, pkg-config, libsystemd-dev and python3-dev come from apt to build it;
#   2. the unit in $UNIT_DIR (default /etc/systemd/system);
#   3. config.example.toml as $CONFIG_DIR/config.toml (mode 0600, root) only when
#      no config exists: an upgrade keeps the config, and the state in
#      /var/lib/gpuwatchd is never touched;
#   4. systemctl daemon-reload, enable, and start (restart on upgrade).
#
# Options:
#   --wheel-dir DIR    install offline: pip --no-index --find-links DIR. DIR holds
#                      wheels of every dependency and of setuptools (the build
#                      backend), e.g. made on a connected machine with
#                      `pip download -d DIR gpuwatchd-deps... setuptools`.
#   --no-start         install and enable, but do not start or restart now.
#   --with-host-fixes  also install the field report's host fixes: a drop-in that
#                      runs nvidia-persistenced with --persistence-mode, and
#                      nvidia-persistence-mode.service (nvidia-smi -pm 1 at boot).
#                      WARNING: this needs a daemon-reload, which on affected hosts
#                      (Docker's systemd cgroup driver) itself revokes GPU access in
#                      running containers; a running gpuwatchd then heals them.
# Environment: PREFIX, CONFIG_DIR, UNIT_DIR, PYTHON (default python3, >= 3.10).
set -euo pipefail

PREFIX=${PREFIX:-/opt/gpuwatchd}
CONFIG_DIR=${CONFIG_DIR:-/etc/gpuwatchd}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
PYTHON=${PYTHON:-python3}
DEFAULT_PREFIX=/opt/gpuwatchd
DEFAULT_CONFIG_DIR=/etc/gpuwatchd

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEEL_DIR=""
START=1
HOST_FIXES=0

say() { printf 'gpuwatchd install: %s\n' "$*"; }
die() { printf 'gpuwatchd install: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
    case $1 in
        --wheel-dir) [ $# -ge 2 ] || die "--wheel-dir needs a directory"; WHEEL_DIR=$2; shift 2 ;;
        --wheel-dir=*) WHEEL_DIR=${1#*=}; shift ;;
        --no-start) START=0; shift ;;
        --with-host-fixes) HOST_FIXES=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
case $PREFIX in /?*) ;; *) die "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
[ "$PREFIX" != / ] || die "PREFIX must not be /"
[ -f "$SRC/pyproject.toml" ] && [ -d "$SRC/gpuwatchd" ] || die "run it from a gpuwatchd working tree ($SRC has no pyproject.toml)"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.10 or newer (apt-get install python3)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$PYTHON is $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'); gpuwatchd needs Python 3.10 or newer: install it, or point PYTHON= at one"
if [ -n "$WHEEL_DIR" ]; then
    [ -d "$WHEEL_DIR" ] || die "--wheel-dir $WHEEL_DIR is not a directory"
    WHEEL_DIR=$(cd "$WHEEL_DIR" && pwd)
fi
# Under a booted systemd (not a chroot or an image build): reload and start.
SYSTEMD_RUNNING=0
[ -d /run/systemd/system ] && SYSTEMD_RUNNING=1

apt_install() {
    [ -z "$WHEEL_DIR" ] || die "offline install (--wheel-dir) needs these Debian packages first: $*"
    command -v apt-get >/dev/null || die "install these packages, then rerun: $*"
    say "installing from apt: $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed"
}

# --- 1. the virtual environment ------------------------------------------------
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv

SITE_FLAG=()
if "$PYTHON" -c 'import systemd.journal, systemd.daemon' 2>/dev/null; then
    say "using the system's systemd-python (python3-systemd)"
    SITE_FLAG=(--system-site-packages)
elif [ -n "$WHEEL_DIR" ] && compgen -G "$WHEEL_DIR/systemd_python-*.whl" >/dev/null; then
    say "using systemd-python from $WHEEL_DIR"
else
    missing=()
    for pkg in gcc pkg-config libsystemd-dev python3-dev; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
fi

if [ -x "$PREFIX/bin/python" ] && "$PREFIX/bin/python" -c 'import sys' 2>/dev/null; then
    say "upgrading the existing installation in $PREFIX"
    "$PYTHON" -m venv --upgrade "${SITE_FLAG[@]}" "$PREFIX" >/dev/null
    # The flag may differ from the last install: pyvenv.cfg decides.
    if [ ${#SITE_FLAG[@]} -gt 0 ]; then site=true; else site=false; fi
    sed -i "s/^include-system-site-packages = .*/include-system-site-packages = $site/" "$PREFIX/pyvenv.cfg"
else
    say "creating the virtual environment $PREFIX"
    rm -rf "$PREFIX"
    "$PYTHON" -m venv "${SITE_FLAG[@]}" "$PREFIX"
fi

PIP=("$PREFIX/bin/python" -m pip --disable-pip-version-check --no-input --quiet)
if [ -n "$WHEEL_DIR" ]; then
    PIP_SOURCE=(--no-index --find-links "$WHEEL_DIR")
else
    PIP_SOURCE=()
fi

# Build from a copy: the working tree may be read-only, and setuptools writes
# build/ and *.egg-info next to the sources.
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir "$STAGE/src" "$STAGE/dist"
cp -r "$SRC/pyproject.toml" "$SRC/gpuwatchd" "$STAGE/src/"
for f in README.md LICENSE config.example.toml; do
    [ ! -f "$SRC/$f" ] || cp "$SRC/$f" "$STAGE/src/"
done
find "$STAGE/src" -name __pycache__ -prune -exec rm -rf {} +
say "building gpuwatchd $("$PYTHON" -c 'import re,sys; print(re.search(r"__version__ = \"(.+?)\"", open(sys.argv[1]).read()).group(1))' "$SRC/gpuwatchd/__init__.py")"
"${PIP[@]}" wheel "${PIP_SOURCE[@]}" --no-deps --wheel-dir "$STAGE/dist" "$STAGE/src" \
    || die "building the gpuwatchd wheel failed${WHEEL_DIR:+ (does $WHEEL_DIR hold a setuptools wheel?)}"
WHEEL=$(compgen -G "$STAGE/dist/gpuwatchd-*.whl" | head -n1)
say "installing gpuwatchd and its dependencies into $PREFIX"
"${PIP[@]}" install "${PIP_SOURCE[@]}" "$WHEEL" || die "pip install failed"
# Same version number, new code (an upgrade from a newer tree): replace it anyway.
"${PIP[@]}" install "${PIP_SOURCE[@]}" --no-deps --force-reinstall "$WHEEL" || die "pip install failed"
"$PREFIX/bin/python" -c 'import systemd.journal, systemd.daemon' \
    || die "systemd-python is not importable in $PREFIX"
[ ! -f "$SRC/README.md" ] || install -m 0644 "$SRC/README.md" "$PREFIX/README.md"

# --- 2. the unit ---------------------------------------------------------------
install -d -m 0755 "$UNIT_DIR"
sed -e "s|$DEFAULT_PREFIX|$PREFIX|g" -e "s|$DEFAULT_CONFIG_DIR/|$CONFIG_DIR/|g" \
    "$SRC/packaging/systemd/gpuwatchd.service" >"$STAGE/gpuwatchd.service"
install -m 0644 "$STAGE/gpuwatchd.service" "$UNIT_DIR/gpuwatchd.service"
say "installed $UNIT_DIR/gpuwatchd.service"

# --- 3. the config, only if none exists -----------------------------------------
install -d -m 0755 -o root -g root "$CONFIG_DIR"
if [ -e "$CONFIG_DIR/config.toml" ]; then
    say "kept the existing $CONFIG_DIR/config.toml"
elif [ -f "$SRC/config.example.toml" ]; then
    install -m 0600 -o root -g root "$SRC/config.example.toml" "$CONFIG_DIR/config.toml"
    say "installed $CONFIG_DIR/config.toml from config.example.toml: list your containers there"
else
    die "no $CONFIG_DIR/config.toml and no config.example.toml in $SRC to install"
fi

# --- host fixes, on request -------------------------------------------------------
if [ "$HOST_FIXES" -eq 1 ]; then
    install -d -m 0755 "$UNIT_DIR/nvidia-persistenced.service.d"
    install -m 0644 "$SRC/packaging/systemd/nvidia-persistenced.service.d/gpuwatchd-persistence-mode.conf" \
        "$UNIT_DIR/nvidia-persistenced.service.d/gpuwatchd-persistence-mode.conf"
    install -m 0644 "$SRC/packaging/systemd/nvidia-persistence-mode.service" \
        "$UNIT_DIR/nvidia-persistence-mode.service"
    say "installed the host fixes (nvidia-persistenced drop-in, nvidia-persistence-mode.service)"
    say "WARNING: the daemon-reload below can revoke GPU access in running containers on"
    say "         affected hosts; gpuwatchd detects it and restarts them"
fi

# --- 4. systemd ------------------------------------------------------------------
if [ "$SYSTEMD_RUNNING" -eq 0 ]; then
    say "systemd is not running here: not reloading or starting; enable it on the target:"
    say "  systemctl enable --now gpuwatchd"
    exit 0
fi
systemctl daemon-reload
systemctl enable --quiet gpuwatchd.service
[ "$HOST_FIXES" -eq 0 ] || systemctl enable --quiet nvidia-persistence-mode.service
if [ "$START" -eq 0 ]; then
    say "installed and enabled; not started (--no-start): systemctl start gpuwatchd"
    exit 0
fi
if [ "$HOST_FIXES" -eq 1 ] && systemctl cat nvidia-persistenced.service >/dev/null 2>&1; then
    systemctl restart nvidia-persistenced.service || say "warning: restarting nvidia-persistenced failed"
    systemctl start nvidia-persistence-mode.service || say "warning: nvidia-persistence-mode.service failed"
fi
if systemctl is-active --quiet gpuwatchd.service; then
    say "restarting gpuwatchd with the new code"
    action=restart
else
    say "starting gpuwatchd"
    action=start
fi
# Type=notify: this returns once the daemon has sent READY=1 (or has failed).
if ! systemctl "$action" gpuwatchd.service; then
    systemctl --no-pager --lines=10 status gpuwatchd.service >&2 || true
    die "gpuwatchd did not start; see: journalctl -u gpuwatchd"
fi
say "running. Status: systemctl status gpuwatchd; records: journalctl -u gpuwatchd"
