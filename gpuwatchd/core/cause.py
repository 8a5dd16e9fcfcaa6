"""The cause rule: why NVML fails inside a container, from explicit evidence.

One pure function, :func:`cause_of`, used by the daemon's core (for the
remediation it decides) and by ``gpuwatchd diagnose`` (for its verdict): each
builds an :class:`Evidence` from what it knows and asks. The two never decide
a cause any other way.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuwatchd.compat import StrEnum
from gpuwatchd.model.vocabulary import HOST_CAUSES, Cause, Confidence, ProbeResult


class DeviceAccess(StrEnum):
    """Whether the container may still open its NVIDIA device nodes."""

    OK = "ok"
    LOST = "lost"  #: the kernel refuses the open (or cgroup v1 lists no rule)
    UNKNOWN = "unknown"  #: not asked, or it cannot tell (cgroup v2 without the check)

    @classmethod
    def of(cls, ok: bool | None) -> DeviceAccess:
        """From a device check's answer: True allowed, False lost, None cannot tell."""
        return cls.UNKNOWN if ok is None else cls.OK if ok else cls.LOST


@dataclass(frozen=True)
class Evidence:
    """Everything the cause of a fault in one container is decided from.

    ``host_nvml``: the host NVML failure (an ``NvmlFailure`` value), None when
    the host's NVML answers.
    ``probe``: the container's last in-container probe result (None: no probe
    has run, as with a log pattern where probes are off). It never names a host
    cause by itself (see below).
    ``device_access``: the device check's answer.
    ``off_since_start``: a GPU was seen with persistence mode off at some time
    since the container's last start; None when there is no such history.
    ``off_now``: a GPU has persistence mode off now; None when the host's GPUs
    are not known (no reading, or host NVML fails).
    ``reload_since_start``: a systemd daemon-reload was seen since the start.
    ``at_risk``: the setup a reload can revoke GPUs in (Docker's systemd
    cgroup driver with the legacy hook, ``--runtime nvidia`` or ``--device``);
    None when not known.
    """

    host_nvml: str | None = None
    probe: ProbeResult | None = ProbeResult.NVML_UNKNOWN_ERROR
    device_access: DeviceAccess = DeviceAccess.UNKNOWN
    off_since_start: bool | None = None
    off_now: bool | None = False
    reload_since_start: bool = False
    at_risk: bool | None = None


def cause_of(e: Evidence) -> tuple[Cause, Confidence | None]:
    """The cause ``e`` points to, with how sure it is (None for ``unknown``).

    In order, the first that holds:

    1. **Host NVML fails** with ``version_mismatch``, ``gpu_lost`` or
       ``driver_not_loaded``: that host cause, certain. No restart cures it.
    2. **Device access lost** by the kernel's own answer: ``device_access_lost``,
       certain (with or without a reload seen).
    3. **Persistence mode off** on a GPU since the container started:
       ``persistence_off``, certain.
    4. **A daemon-reload since the start**, with device access unknown, host
       NVML answering and every GPU's persistence mode known on:
       ``device_access_lost``, probable.
    5. Otherwise ``unknown``.

    Three choices, each pinned by a row of ``tests/unit/test_cause_cases.py``:

    - *Persistence off since the start, not only now.* The fault is made when
      the driver idles while the container is up; persistence mode turned
      back on later does not undo it. So a GPU seen off at any time since the
      start counts. Off now is one moment since the start and counts too: it
      is the evidence when there is no history (``off_since_start`` None).
    - *An at-risk setup alone is no cause.* The systemd cgroup driver with the
      legacy hook or ``--device`` only makes a revoke possible: without a
      reload seen since the start it is a risk to advise about, and the cause
      stays what the other evidence says. ``at_risk`` never changes the
      answer; a reload does (rule 4), and the kernel's check does (rule 2).
    - *Host causes come from host NVML only.* An in-container probe of
      ``version_mismatch``, ``driver_not_loaded`` or ``gpu_lost`` while the
      host's NVML answers says the container's view of the driver is broken
      (a library or device state from before a driver change): a restart
      gives it the host's again, so the cause is found by rules 2 to 5. When
      host NVML fails the same way, rule 1 names it and no restart helps.
    """
    host = HOST_CAUSES.get(e.host_nvml or "")
    if host is not None:
        return host, Confidence.CERTAIN
    if e.device_access is DeviceAccess.LOST:
        return Cause.DEVICE_ACCESS_LOST, Confidence.CERTAIN
    if e.off_since_start or e.off_now:
        return Cause.PERSISTENCE_OFF, Confidence.CERTAIN
    if (
        e.reload_since_start
        and e.device_access is DeviceAccess.UNKNOWN
        and e.host_nvml is None
        and e.off_now is False
    ):
        return Cause.DEVICE_ACCESS_LOST, Confidence.PROBABLE
    return Cause.UNKNOWN, None
