"""What flows into and out of the decision core.

Observers turn the world into *events*; :class:`gpuwatchd.core.machine.Core` turns
``(event, now)`` into *actions*; the executor carries the actions out and
feeds every result back as another event. All classes here are frozen and
hold no live resources, so they can cross threads freely.

Time base: every time in an event, an action or the core (``now``,
``started_at``, ``at``, ``until``) is **wall-clock epoch seconds** as a float,
supplied by the caller, because container start times (Docker's ``StartedAt``)
and systemd reload times are wall-clock. The core never reads a clock.

Executor contract for each action:

- :class:`Emit`: write the record (through a :class:`gpuwatchd.model.records.RecordFolder`).
- :class:`RunProbe`: ``docker exec`` ``command`` in ``ref`` with ``timeout``;
  answer with :class:`ProbeFinished` (same ``ref`` and ``purpose``). When the
  result is a GPU fault, gather cgroup evidence (``device_access_ok``).
- :class:`SetPersistence`: enable persistence mode on those GPU indices;
  answer with one :class:`PersistenceSetFinished`.
- :class:`RestartContainer`: inspect the container right before restarting;
  restart only when it is running (answer ``RestartOutcome.NOT_RUNNING`` with
  the state otherwise); answer :class:`RestartFinished`.
- :class:`ScheduleWakeup`: call ``core.handle(event, now)`` at or after ``at``
  (dropping it on shutdown is fine; the core ignores stale wakeups).
- :class:`SaveState`: write ``state`` with :func:`gpuwatchd.adapters.state_file.save_state`;
  on failure record ``state_save_failed``.

Actions in one returned list are to be started in order (``SaveState``
before a ``RestartContainer`` makes the budget durable before the restart).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gpuwatchd.compat import StrEnum
from gpuwatchd.config import Config
from gpuwatchd.model.records import Record
from gpuwatchd.model.state import PersistedState
from gpuwatchd.model.vocabulary import ProbeResult

# -- shared value types ---------------------------------------------------------------


@dataclass(frozen=True)
class ContainerRef:
    """One container instance: its full ID and its current name (no leading slash)."""

    id: str
    name: str

    @property
    def short_id(self) -> str:
        """Docker's 12-hex short ID."""
        return self.id[:12]


class ContainerState(StrEnum):
    """Docker's ``State.Status`` values."""

    CREATED = "created"
    RUNNING = "running"
    RESTARTING = "restarting"
    PAUSED = "paused"
    EXITED = "exited"
    REMOVING = "removing"
    DEAD = "dead"


@dataclass(frozen=True)
class Gpu:
    """One host GPU as NVML reports it: the one GPU type of the daemon, its NVML
    adapter and ``diagnose``."""

    index: int
    uuid: str
    name: str
    persistence: bool


class NvmlFailure(StrEnum):
    """Why host NVML could not be used."""

    LIBRARY_MISSING = "library_missing"  #: libnvidia-ml.so.1 not found
    DRIVER_NOT_LOADED = "driver_not_loaded"  #: NVML_ERROR_DRIVER_NOT_LOADED
    VERSION_MISMATCH = "version_mismatch"  #: NVML_ERROR_LIB_RM_VERSION_MISMATCH
    GPU_LOST = "gpu_lost"  #: NVML_ERROR_GPU_IS_LOST
    UNKNOWN = "unknown"


class ProbePurpose(StrEnum):
    """Why a probe was asked for."""

    CONFIRM = "confirm"  #: a log line matched a pattern
    TIMER = "timer"  #: the periodic probe.interval check
    VERIFY = "verify"  #: after a restart: does NVML work again?
    DRIFT = "drift"  #: a GPU's persistence mode was seen off
    RELOAD = "reload"  #: systemd reloaded (device access may be revoked)
    RECHECK = "recheck"  #: a deferred fault is checked again before acting


class RestartOutcome(StrEnum):
    """What became of a :class:`RestartContainer`."""

    RESTARTED = "restarted"
    NOT_RUNNING = "not_running"  #: inspected right before: not running, left alone
    FAILED = "failed"  #: the Docker API call failed


class DeadlineKind(StrEnum):
    """Timers the core schedules for itself through :class:`ScheduleWakeup`."""

    CONFIRM = "confirm"  #: a rate-limited or start-grace-delayed confirmation probe
    VERIFY_PROBE = "verify_probe"  #: the next verification probe after a restart
    VERIFY_DEADLINE = "verify_deadline"  #: verify_timeout after the restart
    COOLDOWN_END = "cooldown_end"  #: a deferred fault may be acted on now
    GIVE_UP_END = "give_up_end"  #: a given-up container's window has passed
    PAUSE_END = "pause_end"  #: an operator's pause runs out
    ACTION_LOST = "action_lost"  #: a restart or persistence set got no answer in time


# -- events in --------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSnapshot:
    """Every host GPU's persistence mode, read at start and each gpu.poll_interval."""

    gpus: tuple[Gpu, ...]


@dataclass(frozen=True)
class NvmlUnavailable:
    """Host NVML could not be initialised or read."""

    reason: NvmlFailure
    message: str = ""


@dataclass(frozen=True)
class DockerUnavailable:
    """The Docker engine stopped answering (the observers retry with backoff)."""

    message: str = ""


@dataclass(frozen=True)
class DockerAvailable:
    """The Docker engine answers again."""


@dataclass(frozen=True)
class ContainerWatched:
    """A container is in the watch set (at attach, start, or recreation under a name).

    Sent again for an already watched container it updates its state and start
    time; a new ID under a known name means it was recreated.
    """

    ref: ContainerRef
    state: ContainerState
    started_at: float
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    image: str = ""  #: the image reference it was created from (picks a profile)


@dataclass(frozen=True)
class ContainerStateChanged:
    """A watched container's state changed (die, pause, unpause, start...)."""

    ref: ContainerRef
    state: ContainerState
    started_at: float | None = None  #: the new start time on a (re)start


@dataclass(frozen=True)
class ContainerUnwatched:
    """A container left the watch set (destroyed, relabelled, renamed away)."""

    ref: ContainerRef
    reason: str = ""


@dataclass(frozen=True)
class LogMatched:
    """A log line of a watched container matched a configured pattern."""

    ref: ContainerRef
    pattern: str
    line: str = ""  #: length-capped excerpt


@dataclass(frozen=True)
class ProbeTick:
    """The container's periodic probe is due (the daemon owns the random phase)."""

    ref: ContainerRef


@dataclass(frozen=True)
class ProbeFinished:
    """A :class:`RunProbe` finished.

    ``device_access_ok``: cgroup evidence gathered when the result is a GPU
    fault: True the NVIDIA device rule is present, False it is missing
    (cgroup v1 ``devices.list``), None unknown (cgroup v2, or not gathered).
    """

    ref: ContainerRef
    purpose: ProbePurpose
    result: ProbeResult
    exit_code: int | None = None
    output: str = ""  #: size-capped excerpt
    device_access_ok: bool | None = None


@dataclass(frozen=True)
class SystemdReloaded:
    """systemd reloaded its units (``at``: when).

    ``before_start``: a reload logged before the daemon started, read back from
    the journal at start. It is evidence for faults of containers started
    before it (see :func:`~gpuwatchd.core.cause.cause_of`), and nothing more: no
    record and no probes, since every container gets its first probe at start.
    """

    at: float
    before_start: bool = False


@dataclass(frozen=True)
class PersistenceSetResult:
    """The outcome for one GPU of a :class:`SetPersistence`."""

    index: int
    ok: bool
    uuid: str = ""
    error: str = ""  #: e.g. "NVML_ERROR_NO_PERMISSION: run gpuwatchd as root"


@dataclass(frozen=True)
class PersistenceSetFinished:
    """A :class:`SetPersistence` finished: one result per GPU asked for."""

    results: tuple[PersistenceSetResult, ...]


@dataclass(frozen=True)
class RestartFinished:
    """A :class:`RestartContainer` finished.

    ``new_ref``/``started_at``: the container after the restart (same ID for a
    plain restart). ``state``: what was found when ``NOT_RUNNING``.
    """

    ref: ContainerRef
    outcome: RestartOutcome
    error: str = ""
    new_ref: ContainerRef | None = None
    started_at: float | None = None
    state: ContainerState | None = None


@dataclass(frozen=True)
class DeadlineReached:
    """A :class:`ScheduleWakeup` came due. ``token`` lets the core ignore stale ones."""

    container: str | None  #: a container name, or None for daemon-wide timers
    kind: DeadlineKind
    token: int


@dataclass(frozen=True)
class ResetRequested:
    """``gpuwatchd reset [CONTAINER]``: clear give-ups and budgets (None: all)."""

    container: str | None = None


@dataclass(frozen=True)
class PauseRequested:
    """``gpuwatchd pause [CONTAINER] [--for D]``: stop remediation (None: all).

    ``until``: epoch seconds when the pause ends by itself; None: until resumed.
    """

    container: str | None = None
    until: float | None = None


@dataclass(frozen=True)
class ResumeRequested:
    """``gpuwatchd resume [CONTAINER]`` (None: lift every pause)."""

    container: str | None = None


@dataclass(frozen=True)
class ConfigChanged:
    """SIGHUP loaded a valid new configuration. Budgets and give-ups are kept."""

    config: Config


Event = (
    GpuSnapshot
    | NvmlUnavailable
    | DockerUnavailable
    | DockerAvailable
    | ContainerWatched
    | ContainerStateChanged
    | ContainerUnwatched
    | LogMatched
    | ProbeTick
    | ProbeFinished
    | SystemdReloaded
    | PersistenceSetFinished
    | RestartFinished
    | DeadlineReached
    | ResetRequested
    | PauseRequested
    | ResumeRequested
    | ConfigChanged
)

# -- actions out --------------------------------------------------------------------------


@dataclass(frozen=True)
class Emit:
    """Write this record.

    ``fold`` False: the record led to an action (a probe, a restart, a
    persistence change, a remediation record), so it is written at once and
    never folded (:meth:`gpuwatchd.model.records.RecordFolder.offer`).
    """

    record: Record
    fold: bool = True


@dataclass(frozen=True)
class RunProbe:
    """Run ``command`` inside ``ref`` with ``timeout``; answer :class:`ProbeFinished`."""

    ref: ContainerRef
    purpose: ProbePurpose
    command: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class SetPersistence:
    """Enable persistence mode on these GPU indices; answer :class:`PersistenceSetFinished`."""

    gpu_indices: tuple[int, ...]


@dataclass(frozen=True)
class RestartContainer:
    """Restart ``ref`` (``timeout``: Docker's stop grace) if still running right before.

    Answer :class:`RestartFinished`.
    """

    ref: ContainerRef
    timeout: float


@dataclass(frozen=True)
class ScheduleWakeup:
    """Deliver ``event`` to the core at or after ``at``."""

    at: float
    event: DeadlineReached


@dataclass(frozen=True)
class SaveState:
    """Persist ``state`` (atomically) now."""

    state: PersistedState


Action = Emit | RunProbe | SetPersistence | RestartContainer | ScheduleWakeup | SaveState
