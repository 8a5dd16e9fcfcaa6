#!/usr/bin/env bash
# Install (or upgrade in place) gpuwatchd as a systemd service, from this working tree.
#
#   sudo packaging/install.sh [--wheel-dir DIR] [--no-start] [--with-host-fixes] [--without-apprise]
#
# What it does, in order:
#   1. a virtual environment in $PREFIX (default /opt/gpuwatchd) holding gpuwatchd
#      and its dependencies. systemd-python is published only as source: Debian's
#      python3-systemd is reused through --system-site-packages when installed,
#      else gcc, pkg-config, libsystemd-dev and python3-dev come from apt to build it.
#      It is built beside the installed one, in $PREFIX.new. When a config exists,
#      the new version's `gpuwatchd check-config` must accept it before anything
#      installed changes; if it refuses the file, the installer prints why and what to
#      do and exits 1, leaving the installed version, its unit and the running
#      service as they were (the new build stays in $PREFIX.new for checking the
#      edited file). Then $PREFIX.new replaces $PREFIX;
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
#   --without-apprise  leave out Apprise (gpuwatchd[apprise]), the library behind
#                      [notify] urls (ntfy, Discord, Telegram, e-mail…). Installed by
#                      default; without it a config that sets urls is refused.
# Environment: PREFIX, CONFIG_DIR, UNIT_DIR, PYTHON (default python3, >= 3.10).
set -euo pipefail

PREFIX=${PREFIX:-/opt/gpuwatchd}
CONFIG_DIR=${CONFIG_DIR:-/etc/gpuwatchd}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
PYTHON=${PYTHON:-python3}
DEFAULT_PREFIX=/opt/gpuwatchd
DEFAULT_CONFIG_DIR=/etc/gpuwatchd

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARGS=("$@")
WHEEL_DIR=""
START=1
HOST_FIXES=0
APPRISE=1

say() { printf 'gpuwatchd install: %s\n' "$*"; }
die() { printf 'gpuwatchd install: error: %s\n' "$*" >&2; exit 1; }
quoted() { local q; printf -v q '%q ' "$@"; printf '%s' "${q% }"; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
    case $1 in
        --wheel-dir) [ $# -ge 2 ] || die "--wheel-dir needs a directory"; WHEEL_DIR=$2; shift 2 ;;
        --wheel-dir=*) WHEEL_DIR=${1#*=}; shift ;;
        --no-start) START=0; shift ;;
        --with-host-fixes) HOST_FIXES=1; shift ;;
        --without-apprise) APPRISE=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
case $PREFIX in /?*) ;; *) die "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
while [ "$PREFIX" != / ] && [ "${PREFIX%/}" != "$PREFIX" ]; do PREFIX=${PREFIX%/}; done
[ "$PREFIX" != / ] || die "PREFIX must not be /"
# The new version is built in NEW; OLD holds the installed one for the moment of the swap.
NEW=$PREFIX.new
OLD=$PREFIX.old
CONFIG=$CONFIG_DIR/config.toml
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

# Only ever replace what install.sh made: a virtual environment.
for dir in "$PREFIX" "$NEW" "$OLD"; do
    [ ! -e "$dir" ] || [ -f "$dir/pyvenv.cfg" ] || die "$dir is not a gpuwatchd virtual environment; not replacing it"
done
# An earlier run that stopped between the two renames of the swap left the
# installed version in OLD only: put it back first.
if [ -e "$OLD" ] && [ ! -e "$PREFIX" ]; then mv "$OLD" "$PREFIX"; fi
rm -rf "$NEW" "$OLD"

STAGE=$(mktemp -d)
REMOVE_NEW=1
cleanup() {
    rm -rf "$STAGE"
    [ "$REMOVE_NEW" -eq 0 ] || rm -rf "$NEW"
}
trap cleanup EXIT

if [ -x "$PREFIX/bin/python" ] && "$PREFIX/bin/python" -c 'import sys' 2>/dev/null; then
    say "upgrading the existing installation in $PREFIX: building the new version in $NEW"
elif [ -e "$PREFIX" ]; then
    say "replacing $PREFIX (its Python no longer runs): building the new version in $NEW"
else
    say "creating the virtual environment $PREFIX: building it in $NEW"
fi
# The prompt the activate scripts show is the final directory's name, not NEW's.
"$PYTHON" -m venv "${SITE_FLAG[@]}" --prompt "$(basename "$PREFIX")" "$NEW"

PIP=("$NEW/bin/python" -m pip --disable-pip-version-check --no-input --quiet)
if [ -n "$WHEEL_DIR" ]; then
    PIP_SOURCE=(--no-index --find-links "$WHEEL_DIR")
else
    PIP_SOURCE=()
fi

# Build from a copy: the working tree may be read-only, and setuptools writes
# build/ and *.egg-info next to the sources.
mkdir "$STAGE/src" "$STAGE/dist"
cp -r "$SRC/pyproject.toml" "$SRC/gpuwatchd" "$STAGE/src/"
for f in README.md LICENSE config.example.toml; do
    [ ! -f "$SRC/$f" ] || cp "$SRC/$f" "$STAGE/src/"
done
find "$STAGE/src" -name __pycache__ -prune -exec rm -rf {} +
VERSION=$("$PYTHON" -c 'import re,sys; print(re.search(r"__version__ = \"(.+?)\"", open(sys.argv[1]).read()).group(1))' "$SRC/gpuwatchd/__init__.py")
say "building gpuwatchd $VERSION"
"${PIP[@]}" wheel "${PIP_SOURCE[@]}" --no-deps --wheel-dir "$STAGE/dist" "$STAGE/src" \
    || die "building the gpuwatchd wheel failed${WHEEL_DIR:+ (does $WHEEL_DIR hold a setuptools wheel?)}"
WHEEL=$(compgen -G "$STAGE/dist/gpuwatchd-*.whl" | head -n1)
say "installing gpuwatchd and its dependencies into $NEW"
# No bytecode yet: it records the path it was compiled at, which is not $PREFIX.
# The extra goes with the wheel's path: pip reads "file.whl[apprise]".
EXTRA=""
[ "$APPRISE" -eq 0 ] || EXTRA="[apprise]"
"${PIP[@]}" install --no-compile "${PIP_SOURCE[@]}" "$WHEEL$EXTRA" || die "pip install failed${WHEEL_DIR:+ (does $WHEEL_DIR hold the apprise wheels? or pass --without-apprise)}"
"$NEW/bin/python" -c 'import systemd.journal, systemd.daemon' \
    || die "systemd-python is not importable in $NEW"
[ ! -f "$SRC/README.md" ] || install -m 0644 "$SRC/README.md" "$NEW/README.md"

# The existing config must suit the new version before it replaces the running one.
if [ -e "$CONFIG" ]; then
    say "checking $CONFIG with gpuwatchd $VERSION"
    check=("$NEW/bin/gpuwatchd" check-config --config "$CONFIG")
    rc=0
    problems=$(PYTHONDONTWRITEBYTECODE=1 "${check[@]}" 2>&1 >/dev/null) || rc=$?
    if [ "$rc" -eq 2 ]; then
        # Kept: the advised check-config runs the new version from there.
        REMOVE_NEW=0
        {
            printf 'gpuwatchd install: error: gpuwatchd %s refuses %s:\n' "$VERSION" "$CONFIG"
            printf '%s\n' "$problems" | sed 's/^/  /'
            printf 'gpuwatchd install: nothing was changed: the installed gpuwatchd, its unit and its service are as they were.\n'
            printf 'gpuwatchd install: to upgrade, edit %s until the new version accepts it:\n' "$CONFIG"
            printf '  %s\n' "$(quoted "${check[@]}")"
            printf 'gpuwatchd install: then run %s again.\n' "$(quoted "$0" "${ARGS[@]}")"
        } >&2
        exit 1
    elif [ "$rc" -ne 0 ]; then
        printf '%s\n' "$problems" | sed 's/^/  /' >&2
        die "gpuwatchd $VERSION could not check $CONFIG (check-config exited $rc); nothing was changed"
    fi
    # A warning (a file that gpuwatchd run would refuse to read) is passed on.
    [ -z "$problems" ] || printf '%s\n' "$problems" >&2
fi

# Move the new build to its place. pip wrote its path into the scripts'
# #! lines, the activate scripts and pyvenv.cfg: make those $PREFIX.
"$NEW/bin/python" - "$NEW" "$PREFIX" <<'EOF'
import os
import sys

new, final = (os.fsencode(arg) for arg in sys.argv[1:])
bindir = os.path.join(new, b"bin")
paths = [os.path.join(new, b"pyvenv.cfg")] + [os.path.join(bindir, n) for n in os.listdir(bindir)]
for path in paths:
    if os.path.islink(path) or not os.path.isfile(path):
        continue
    with open(path, "r+b") as f:
        data = f.read()
        if new in data:
            f.seek(0)
            f.write(data.replace(new, final))
            f.truncate()
EOF
# Bytecode that names the files where they will be.
"$NEW/bin/python" -m compileall -q -f -j 0 -s "$NEW" -p "$PREFIX" "$NEW/lib" >/dev/null \
    || say "warning: compiling the bytecode failed; gpuwatchd starts slower, nothing else"
if [ -e "$PREFIX" ]; then mv "$PREFIX" "$OLD"; fi
if ! mv "$NEW" "$PREFIX"; then
    [ ! -e "$OLD" ] || mv "$OLD" "$PREFIX"
    die "moving $NEW to $PREFIX failed"
fi
rm -rf "$OLD"
say "installed gpuwatchd $VERSION in $PREFIX"

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
