#!/usr/bin/env bash
# Remove gpuwatchd: stop and disable the service, remove its unit and $PREFIX
# (and $PREFIX.new, a build install.sh kept when it refused to upgrade).
#
#   sudo packaging/uninstall.sh [--purge]
#
# The config ($CONFIG_DIR, default /etc/gpuwatchd) and the state
# (/var/lib/gpuwatchd) are kept unless --purge is given. The host fixes
# (install.sh --with-host-fixes) are removed too when present. Running it again
# is harmless. Environment: PREFIX, CONFIG_DIR, UNIT_DIR as for install.sh.
set -euo pipefail

PREFIX=${PREFIX:-/opt/gpuwatchd}
CONFIG_DIR=${CONFIG_DIR:-/etc/gpuwatchd}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
STATE_DIR=/var/lib/gpuwatchd
PURGE=0

say() { printf 'gpuwatchd uninstall: %s\n' "$*"; }
die() { printf 'gpuwatchd uninstall: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --purge) PURGE=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
case $PREFIX in /?*) ;; *) die "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
while [ "$PREFIX" != / ] && [ "${PREFIX%/}" != "$PREFIX" ]; do PREFIX=${PREFIX%/}; done
[ "$PREFIX" != / ] || die "PREFIX must not be /"

SYSTEMD_RUNNING=0
[ -d /run/systemd/system ] && SYSTEMD_RUNNING=1

units=(gpuwatchd.service)
[ ! -e "$UNIT_DIR/nvidia-persistence-mode.service" ] || units+=(nvidia-persistence-mode.service)
if [ "$SYSTEMD_RUNNING" -eq 1 ]; then
    for unit in "${units[@]}"; do
        # A unit that is not loaded (already removed) is not an error here.
        systemctl disable --now --quiet "$unit" 2>/dev/null || true
    done
fi

removed=0
for path in "$UNIT_DIR/gpuwatchd.service" \
    "$UNIT_DIR/nvidia-persistence-mode.service" \
    "$UNIT_DIR/nvidia-persistenced.service.d/gpuwatchd-persistence-mode.conf"; do
    if [ -e "$path" ]; then
        rm -f "$path"
        say "removed $path"
        removed=1
    fi
done
rmdir "$UNIT_DIR/nvidia-persistenced.service.d" 2>/dev/null || true
if [ "$removed" -eq 1 ] && [ "$SYSTEMD_RUNNING" -eq 1 ]; then
    systemctl daemon-reload
    systemctl reset-failed gpuwatchd.service 2>/dev/null || true
fi

# $PREFIX.new and $PREFIX.old: what install.sh leaves beside $PREFIX when it
# refuses an upgrade or is interrupted.
for dir in "$PREFIX" "$PREFIX.new" "$PREFIX.old"; do
    [ -e "$dir" ] || continue
    # Only ever delete what install.sh made: a virtual environment.
    [ -f "$dir/pyvenv.cfg" ] || die "$dir is not a gpuwatchd virtual environment; not removing it"
    rm -rf "$dir"
    say "removed $dir"
done

if [ "$PURGE" -eq 1 ]; then
    for dir in "$CONFIG_DIR" "$STATE_DIR"; do
        if [ -e "$dir" ]; then
            rm -rf "$dir"
            say "removed $dir"
        fi
    done
else
    for dir in "$CONFIG_DIR" "$STATE_DIR"; do
        [ ! -e "$dir" ] || say "kept $dir (remove it with --purge)"
    done
fi
say "done"
