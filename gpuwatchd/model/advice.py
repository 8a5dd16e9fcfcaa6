"""What to do about each cause: the one table of advice, for records and ``diagnose``.

The daemon's records carry one sentence (``advice`` of ``remediation_skipped``);
``gpuwatchd diagnose`` shows the same causes with a summary, the commands that
fix them now and the ones that keep them fixed. Both read this module, so a
cause is never advised two ways.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gpuwatchd.model.vocabulary import Cause


@dataclass(frozen=True)
class HostCauseAdvice:
    """A host cause in words: what happened, what to do, and the commands."""

    summary: str  #: what happened, one sentence (diagnose's verdict)
    advice: str  #: what to do, one sentence (the records' ``advice``)
    fix_now: tuple[str, ...]  #: commands (or ``#`` comments) that fix it now
    fix_for_good: tuple[str, ...]  #: what keeps it fixed


#: The host causes: a container restart cures none of them.
HOST_CAUSE_ADVICE: Mapping[Cause, HostCauseAdvice] = MappingProxyType({
    Cause.DRIVER_NOT_LOADED: HostCauseAdvice(
        "The NVIDIA kernel module is not loaded, so NVML fails everywhere.",
        "The NVIDIA kernel module is not loaded: reload it (modprobe nvidia) or reboot the host.",
        ("sudo modprobe nvidia", "sudo reboot  # if modprobe fails"),
        ("# make sure the NVIDIA kernel module loads at boot (DKMS built for the running "
         "kernel)",),
    ),
    Cause.VERSION_MISMATCH: HostCauseAdvice(
        "The NVIDIA driver was upgraded without a reboot: the loaded kernel module and the "
        "user-space library differ.",
        "The NVIDIA driver was upgraded without a reboot: reboot the host.",
        ("sudo reboot",),
        ("# reboot after every NVIDIA driver upgrade",),
    ),
    Cause.GPU_LOST: HostCauseAdvice(
        "A GPU fell off the bus: NVML reports it lost.",
        "The GPU fell off the bus: reboot the host and check the card's power and seating.",
        ("sudo reboot",),
        ("# check the card's power and seating (nvidia-smi -q; dmesg: Xid 79)",),
    ),
})

#: Where a host cause cannot be cured by a container restart: what to do instead
#: (by cause value; the records' ``advice``).
ADVICE: Mapping[str, str] = MappingProxyType(
    {cause.value: a.advice for cause, a in HOST_CAUSE_ADVICE.items()}
)

#: What to do about a fault in a container whose action is "notify" (by cause;
#: ``{container}`` is filled in). Each restarts the container only when its job allows.
NOTIFY_ADVICE: Mapping[str, str] = MappingProxyType(
    {
        "persistence_off": "Persistence mode was off and the driver idled; it is on again "
        "now (enforce_persistence). Restart {container} when its job allows: "
        "docker restart {container}.",
        "device_access_lost": "A systemd daemon-reload revoked the container's GPU access; "
        "running processes keep working, new ones fail. Restart {container} when its job "
        "allows: docker restart {container}.",
        "unknown": "NVML fails inside {container}. Restart it when its job allows: "
        "docker restart {container}; `gpuwatchd diagnose {container}` names the cause.",
    }
)

#: What keeps a daemon-reload from revoking a container's GPU access (one sentence).
RELOAD_ADVICE = (
    "give the container its GPUs through CDI (--device nvidia.com/gpu=all), or run "
    "`nvidia-ctk system create-dev-char-symlinks --create-all`, or switch Docker to the "
    "cgroupfs driver; until then a restart after each reload restores access"
)

#: The same, as commands (diagnose).
DEVICE_ACCESS_PREVENTION = (
    "sudo nvidia-ctk system create-dev-char-symlinks --create-all",
    "sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml  "
    "# then run containers with --device nvidia.com/gpu=all (CDI)",
    '# or give Docker the cgroupfs driver: "exec-opts": ["native.cgroupdriver=cgroupfs"] '
    "in /etc/docker/daemon.json, then sudo systemctl restart docker",
)

#: What packaging/systemd ships, and where install.sh puts it.
DROPIN_SOURCE = "packaging/systemd/nvidia-persistenced.service.d/gpuwatchd-persistence-mode.conf"
DROPIN_TARGET = "/etc/systemd/system/nvidia-persistenced.service.d/gpuwatchd-persistence-mode.conf"
ONESHOT_SOURCE = "packaging/systemd/nvidia-persistence-mode.service"
ONESHOT_TARGET = "/etc/systemd/system/nvidia-persistence-mode.service"

#: Persistence mode on now, as a command.
PERSISTENCE_FIX_NOW = "sudo nvidia-smi -pm 1"
#: What keeps persistence mode on from boot, as commands.
PERSISTENCE_FIX_FOR_GOOD = (
    f"sudo install -D -m 644 {DROPIN_SOURCE} {DROPIN_TARGET}  # in gpuwatchd's source tree",
    f"sudo install -m 644 {ONESHOT_SOURCE} {ONESHOT_TARGET}",
    "sudo systemctl daemon-reload",
    "sudo systemctl restart nvidia-persistenced",
    "sudo systemctl enable --now nvidia-persistence-mode.service",
)
#: Said with the fixes above: they need a daemon-reload, itself a risk on some hosts.
RELOAD_CAVEAT = (
    "`sudo packaging/install.sh --with-host-fixes` installs the same two units; either way "
    "the daemon-reload can revoke GPU access in running containers under Docker's systemd "
    "cgroup driver: restart them afterwards"
)
