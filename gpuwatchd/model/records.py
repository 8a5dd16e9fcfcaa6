"""The record catalogue: every structured record gpuwatchd writes, as data.

The catalogue is a public contract (README: "Records"). Each event name has a
fixed level, a human message template and, for the records an operator or a
journal query needs to find reliably, a stable ``MESSAGE_ID`` (32 hex digits,
systemd journal catalogue style). Names, levels and message IDs never change
meaning once released.

A :class:`Record` carries only the shared fields (``container``,
``container_id``, ``gpu_index``, ``gpu_uuid``, ``cause``, ``confidence``,
``result``, ``dry_run``, ``count``) plus the extras its event declares in the
catalogue. :func:`make_record` is the one way to build a record; it rejects an
unknown event or field, which is a programming error, never an operator one.
The log sink adds ``timestamp`` (ISO 8601 with milliseconds), ``level`` and
``event`` when it writes the record.

:class:`RecordFolder` is the pure storm guard: identical records about the
same container within a short interval are folded into one with a count, so
journald's rate limit never hides the important ones. Only true repeats are
folded: a record that led to an action, and the action's record, are written
at once, and whatever was held back about that container is written before
the action's record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gpuwatchd.compat import StrEnum

# The advice records carry lives in one table; these names stay importable here.
from gpuwatchd.model.advice import ADVICE as ADVICE
from gpuwatchd.model.advice import NOTIFY_ADVICE as NOTIFY_ADVICE
from gpuwatchd.model.advice import RELOAD_ADVICE as RELOAD_ADVICE

#: The values a record field may hold: all of them map directly to JSON.
FieldValue = str | int | float | bool | tuple[str, ...] | None


class Level(StrEnum):
    """Severity of a record; maps onto syslog priorities in the journal."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


#: Fields any record may carry, where they apply.
COMMON_FIELDS: frozenset[str] = frozenset(
    {
        "container",  # the container's name
        "container_id",  # its 12-hex short ID
        "gpu_index",
        "gpu_uuid",
        "cause",  # a gpuwatchd.model.vocabulary.Cause value
        "confidence",  # a gpuwatchd.model.vocabulary.Confidence value
        "result",  # a ProbeResult value, or an outcome word the event documents
        "dry_run",
        "count",  # how many occurrences this record stands for
        "folded",  # true on a summary written by RecordFolder
    }
)


@dataclass(frozen=True)
class EventSpec:
    """One catalogue entry.

    ``extras`` are the event-specific fields allowed besides the common ones.
    ``fold_keys`` are the fields (besides event and container) that make two
    records "identical" for folding. ``foldable`` is False for records that
    must each reach the journal (critical ones, and those with a MESSAGE_ID).
    """

    name: str
    level: Level
    when: str
    message: str
    message_id: str | None = None
    extras: tuple[str, ...] = ()
    fold_keys: tuple[str, ...] = ()
    foldable: bool = True


_L = Level

#: Every event gpuwatchd records, in the README's order; CATALOGUE indexes them by name.
_ENTRIES: tuple[EventSpec, ...] = (
    # -- the daemon itself -------------------------------------------------
    EventSpec(
        "daemon_started",
        _L.INFO,
        "the daemon is up and watching",
        "gpuwatchd {version} started (dry run: {dry_run})",
        "c49e0fb846394d28b1fd8fefa256e3e5",
        ("version", "config"),
        foldable=False,
    ),
    EventSpec(
        "daemon_stopping",
        _L.INFO,
        "SIGTERM/SIGINT received; shutting down",
        "gpuwatchd stopping ({reason})",
        None,
        ("reason",),
        foldable=False,
    ),
    EventSpec(
        "config_reloaded",
        _L.INFO,
        "SIGHUP: a valid new configuration swapped in",
        "configuration reloaded from {config}",
        None,
        ("config",),
    ),
    EventSpec(
        "config_reload_failed",
        _L.ERROR,
        "SIGHUP: the new configuration is invalid; the old one stays",
        "configuration reload failed, keeping the old one: {error}",
        None,
        ("config", "error"),
    ),
    EventSpec(
        "state_file_invalid",
        _L.ERROR,
        "the state file was unreadable, corrupt or of another version at start",
        "state file unusable, starting with empty state: {reason}",
        "a95af66070f44f6586a35149d79f955e",
        ("path", "reason"),
        foldable=False,
    ),
    EventSpec(
        "state_save_failed",
        _L.ERROR,
        "writing the state file failed",
        "could not save state to {path}: {error}",
        None,
        ("path", "error"),
    ),
    EventSpec(
        "watch_set_changed",
        _L.INFO,
        "a container joined, left or was recreated in the watch set",
        "container {container} {change} ({reason})",
        None,
        ("change", "reason"),
        ("change",),
    ),
    # -- observers' health ---------------------------------------------------
    EventSpec(
        "docker_unavailable",
        _L.ERROR,
        "the Docker engine stopped answering",
        "Docker unavailable, retrying: {error}",
        None,
        ("error",),
    ),
    EventSpec(
        "docker_call_failed",
        _L.WARNING,
        "one Docker call failed (timed out, refused); that call's work ends failed",
        "Docker call {call} failed: {error}",
        None,
        ("call", "error"),
        ("call",),
    ),
    EventSpec(
        "docker_available",
        _L.INFO,
        "the Docker engine answers again",
        "Docker available again",
    ),
    EventSpec(
        "nvml_unavailable",
        _L.ERROR,
        "host NVML cannot be used (degraded mode)",
        "host NVML unavailable ({reason}): {error}",
        None,
        ("reason", "error"),
        ("reason",),
    ),
    EventSpec(
        "nvml_available",
        _L.INFO,
        "host NVML works again",
        "host NVML available again",
    ),
    # -- host GPUs -----------------------------------------------------------
    EventSpec(
        "gpu_persistence_off",
        _L.WARNING,
        "a GPU's persistence mode was seen Disabled (once per transition)",
        "GPU {gpu_index} ({gpu_uuid}) has persistence mode off",
        None,
        ("gpu_name",),
        ("gpu_uuid",),
    ),
    EventSpec(
        "gpu_persistence_enabled",
        _L.WARNING,
        "gpuwatchd enabled persistence mode on a GPU (dry run: would have)",
        "persistence mode enabled on GPU {gpu_index} ({gpu_uuid}) (dry run: {dry_run})",
        "2ea6ee2459314d938355b36b3568707c",
        ("gpu_name",),
        foldable=False,
    ),
    EventSpec(
        "gpu_persistence_set_failed",
        _L.ERROR,
        "enabling persistence mode failed (e.g. NO_PERMISSION)",
        "could not enable persistence mode on GPU {gpu_index} ({gpu_uuid}): {error}",
        "fc489ef6864f48bb9952a46ff65acae2",
        ("error",),
        ("gpu_uuid",),
    ),
    EventSpec(
        "systemd_reload_detected",
        _L.INFO,
        "systemd reloaded (can revoke GPU device access in running containers)",
        "systemd daemon-reload detected; probing every watched container",
        None,
        ("at",),
    ),
    EventSpec(
        "reload_will_break",
        _L.WARNING,
        "the next systemd daemon-reload will revoke a container's GPU access: Docker's "
        "systemd cgroup driver and a scope whose DeviceAllow= lacks the NVIDIA nodes "
        "(once per container)",
        "the next systemctl daemon-reload will revoke GPU access in {container}: its scope "
        "allows no NVIDIA device node; {advice}",
        "e67c3763d1a14fb689491cd0553425a8",
        ("device_allow", "advice"),
        foldable=False,
    ),
    # -- probes and logs -------------------------------------------------------
    EventSpec(
        "probe_failed",
        _L.ERROR,
        "the in-container NVML check failed or timed out",
        "NVML check failed in {container}: {result}",
        None,
        ("purpose", "exit_code", "output", "device_access"),
        ("result",),
    ),
    EventSpec(
        "probe_unavailable",
        _L.WARNING,
        "the probe command cannot run in the container (once, until a probe runs there again)",
        "cannot check NVML in {container}: probe command unavailable "
        "(exit {exit_code}); log matches cannot be confirmed there",
        None,
        ("command", "exit_code", "output"),
    ),
    EventSpec(
        "log_pattern_matched",
        _L.WARNING,
        "a watched container logged a configured pattern (counted between probes)",
        "{container} logged {pattern!r} {count} time(s)",
        None,
        ("pattern", "line"),
        ("pattern",),
    ),
    EventSpec(
        "log_match_not_gpu",
        _L.INFO,
        "a pattern matched but NVML works in the container (e.g. a real tuner fault)",
        "{container} logged {pattern!r} {count} time(s) but NVML works there: not a GPU fault",
        None,
        ("pattern",),
        ("pattern",),
    ),
    # -- remediation -----------------------------------------------------------
    EventSpec(
        "container_restarted",
        _L.WARNING,
        "gpuwatchd restarted a container (dry run: would have)",
        "restarted {container} (cause {cause}, restart {attempt} of {max_restarts} "
        "in the window; dry run: {dry_run})",
        "ae942c6d94624b0e92879d50930b6925",
        ("attempt", "max_restarts", "matches"),
        foldable=False,
    ),
    EventSpec(
        "container_recovered",
        _L.INFO,
        "after a restart, NVML works in the container again (result ok), or a "
        "probe-less container stayed running and silent (result unverified)",
        "{container} recovered ({result}) after {elapsed}s",
        "f3ff77b4260d4c33bf935fcfaca2f4ab",
        ("elapsed", "matches"),
        foldable=False,
    ),
    EventSpec(
        "remediation_failed",
        _L.ERROR,
        "a restart failed, or the container did not verify within verify_timeout",
        "remediation of {container} failed: {result} {error}",
        "486e2eefc1d94f5c9ac5038b406a6988",
        ("error", "state", "matches"),
        foldable=False,
    ),
    EventSpec(
        "remediation_skipped",
        _L.WARNING,
        "a fault was found but gpuwatchd will not restart: reason host_cause "
        "(with advice; once per window), notify_only (action = notify; with advice; once "
        "per window per cause), orchestrated (once), paused, not_running",
        "not restarting {container}: {reason}. {advice}",
        "a77c4bd8079d43edb1b3be9de0c335f7",
        ("reason", "advice", "state", "matches"),
        ("reason", "cause"),
    ),
    EventSpec(
        "remediation_deferred",
        _L.INFO,
        "a fault arrived within cooldown of the last restart; retried when it ends",
        "fault in {container} within the restart cooldown; rechecking at {until}",
        None,
        ("until",),
    ),
    EventSpec(
        "remediation_gave_up",
        _L.CRITICAL,
        "max_restarts reached within window: no more restarts until the window "
        "passes or `gpuwatchd reset`",
        "giving up on {container}: {count} restarts within {window}s did not cure it "
        "(cause {cause}); run `gpuwatchd reset {container}` once fixed",
        "07648c1206a9405482ed77e8761df59c",
        ("window", "until"),
        foldable=False,
    ),
    EventSpec(
        "remediation_rearmed",
        _L.INFO,
        "a given-up container's window passed: restarts allowed again",
        "{container} re-armed: its restart window has passed",
        None,
        (),
        foldable=False,
    ),
    # -- the operator ------------------------------------------------------------
    EventSpec(
        "operator_reset",
        _L.WARNING,
        "`gpuwatchd reset`: restart budget and give-up cleared",
        "operator reset {target}",
        "aae153c68a1a498fabd517b2412be5c1",
        ("target",),
        foldable=False,
    ),
    EventSpec(
        "operator_paused",
        _L.WARNING,
        "`gpuwatchd pause`: remediation stopped (probes and records go on)",
        "operator paused remediation of {target} until {until}",
        "2f4666d5bcc548f0ae03ed308ad1f006",
        ("target", "until"),
        foldable=False,
    ),
    EventSpec(
        "operator_resumed",
        _L.INFO,
        "`gpuwatchd resume`, or a pause's time ran out",
        "remediation of {target} resumed ({reason})",
        "80f1c6c1e1724391a7d83094f1ff37b7",
        ("target", "reason"),
        foldable=False,
    ),
    EventSpec(
        "notify_failed",
        _L.WARNING,
        "a notification command, webhook or Apprise URL failed (never fatal)",
        "notification failed: {error}",
        None,
        ("error",),
    ),
    EventSpec(
        "log_unreadable",
        _L.WARNING,
        "a watched container's log cannot be followed (e.g. log driver `none`)",
        "cannot follow the log of {container}: {error}",
        None,
        ("error",),
    ),
    EventSpec(
        "control_unavailable",
        _L.WARNING,
        "the control socket could not be opened; status/reset/pause will not answer",
        "control socket unavailable: {error}",
        None,
        ("path", "error"),
        foldable=False,
    ),
    EventSpec(
        "metrics_unavailable",
        _L.WARNING,
        "the metrics address could not be bound; no /metrics until restarted",
        "metrics unavailable on {listen}: {error}",
        None,
        ("listen", "error"),
        foldable=False,
    ),
    EventSpec(
        "metrics_busy",
        _L.WARNING,
        "the metrics server was at its connection cap; a new connection was closed at once",
        "metrics connection refused on {listen}: {limit} already open",
        None,
        ("listen", "limit"),
        ("listen",),
    ),
    EventSpec(
        "accept_failed",
        _L.ERROR,
        "a listening socket (control or metrics) could not accept, e.g. out of file "
        "descriptors; retried a second later",
        "could not accept a connection on {listener}: {error}",
        None,
        ("listener", "error"),
        ("listener",),
    ),
    EventSpec(
        "internal_error",
        _L.ERROR,
        "a bug: an internal task failed; the daemon goes on",
        "internal error in {task}: {error}",
        None,
        ("task", "error"),
    ),
)
CATALOGUE: Mapping[str, EventSpec] = MappingProxyType({s.name: s for s in _ENTRIES})

@dataclass(frozen=True)
class Record:
    """One structured record: an event name, its level and its fields.

    ``fields`` is read-only. Build records with :func:`make_record`.
    """

    event: str
    level: Level
    fields: Mapping[str, FieldValue] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def spec(self) -> EventSpec:
        """The catalogue entry for this record's event."""
        return CATALOGUE[self.event]

    @property
    def message_id(self) -> str | None:
        """The stable journal MESSAGE_ID, or None for this event."""
        return self.spec.message_id

    @property
    def message(self) -> str:
        """The human message: the template filled in; a missing field reads ``?``."""
        return self.spec.message.format_map(_Defaulting(self.fields))

    def get(self, name: str) -> FieldValue:
        """The field ``name``, or None when the record does not carry it."""
        return self.fields.get(name)

    def with_fields(self, **changes: FieldValue) -> Record:
        """A copy with some fields replaced or added (None removes a field).

        Raises:
            ValueError: when a field is not allowed for this event.
        """
        merged = dict(self.fields)
        merged.update(changes)
        return make_record(self.event, **merged)


class _Defaulting(dict[str, object]):
    def __missing__(self, key: str) -> object:
        return "?"


def make_record(event: str, **fields: FieldValue) -> Record:
    """Build a record for a catalogued ``event``; fields set to None are left out.

    Raises:
        ValueError: when ``event`` is not in the catalogue, or a field is neither
            a common field nor one of the event's extras (a programming error).
    """
    spec = CATALOGUE.get(event)
    if spec is None:
        raise ValueError(f"unknown record event {event!r}")
    allowed = COMMON_FIELDS | set(spec.extras)
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"record {event!r} does not allow field(s) {sorted(unknown)}")
    kept = {k: v for k, v in fields.items() if v is not None}
    return Record(event, spec.level, MappingProxyType(kept))


# -- folding -----------------------------------------------------------------------


@dataclass
class _Group:
    ends: float  #: the current interval's end
    suppressed: int = 0  #: occurrences folded in this interval
    held: int = 0  #: records folded in this interval
    last: Record | None = None  #: the latest folded record, the summary's template

    def summary(self) -> Record | None:
        """What stands for the held records: None when none is held, the record
        itself when only one is, else the latest with the total count, folded."""
        if self.last is None:
            return None
        if self.held == 1:
            return self.last
        return self.last.with_fields(count=self.suppressed, folded=True)


class RecordFolder:
    """Folds identical records seen within ``interval`` seconds into one with a count.

    Pure and clock-free: the caller passes ``now`` (the same time base as the
    core). Two records are identical when they share the event, the container
    (name and ID) and the event's ``fold_keys``. The first one of a kind is
    returned at once; duplicates within the interval are held back and, when
    the interval ends, one summary is returned: the latest duplicate with
    ``count`` = the occurrences it stands for (each record counts as its own
    ``count``, default 1) and ``folded = true``. A storm therefore yields at
    most one record per kind per interval; a summary of a single record is
    that record, unchanged (never ``count = 1, folded = true``).

    Some records always pass straight through, never folded: critical ones,
    events the catalogue marks not foldable (the records of gpuwatchd's own
    actions), and any offered with ``fold = False`` (a record that led to an
    action). Before a catalogue-unfoldable record about a container, what is
    held about that container is written (so a restart's reasons come before
    it) and its groups start afresh.

    Call :meth:`due` when :meth:`next_deadline` passes (and :meth:`flush` at
    shutdown) so summaries are not held back indefinitely.
    """

    def __init__(self, interval: float = 10.0) -> None:
        """Raises ValueError when ``interval`` is not positive."""
        if interval <= 0:
            raise ValueError("the folding interval must be positive")
        self.interval = interval
        self._groups: dict[tuple[object, ...], _Group] = {}

    @staticmethod
    def key(record: Record) -> tuple[object, ...]:
        """What makes two records the same for folding."""
        spec = record.spec
        return (
            record.event,
            record.get("container"),
            record.get("container_id"),
            *(record.get(k) for k in spec.fold_keys),
        )

    def offer(self, record: Record, now: float, *, fold: bool = True) -> list[Record]:
        """Take one record; return what should be written now, in order.

        The result holds any summaries whose interval has ended, then (before
        an action's record) what is held about its container, then ``record``
        itself unless it was folded.
        """
        out = self.due(now)
        if record.level is Level.CRITICAL or not record.spec.foldable:
            container = record.get("container")
            if container is not None:
                out += self._release(container)
            out.append(record)
            return out
        if not fold:
            out.append(record)
            return out
        key = self.key(record)
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = _Group(ends=now + self.interval)
            out.append(record)
            return out
        count = record.get("count")
        group.suppressed += count if isinstance(count, int) and count > 0 else 1
        group.held += 1
        group.last = record
        return out

    def _release(self, container: FieldValue) -> list[Record]:
        """What is held about ``container``, in the order it was first held; its groups
        are forgotten."""
        out: list[Record] = []
        for key, group in list(self._groups.items()):
            if key[1] != container:
                continue
            summary = group.summary()
            if summary is not None:
                out.append(summary)
            del self._groups[key]
        return out

    def due(self, now: float) -> list[Record]:
        """Summaries of every interval that has ended by ``now``.

        A group with duplicates starts a new interval after its summary (the
        storm may go on); a quiet group is forgotten, so the next record of
        that kind is written at once.
        """
        out: list[Record] = []
        for key, group in list(self._groups.items()):
            if now < group.ends:
                continue
            summary = group.summary()
            if summary is None:
                del self._groups[key]
                continue
            out.append(summary)
            self._groups[key] = _Group(ends=max(now, group.ends) + self.interval)
        return out

    def flush(self) -> list[Record]:
        """Every pending summary now, regardless of intervals; forgets all groups."""
        out = [s for s in (g.summary() for g in self._groups.values()) if s is not None]
        self._groups.clear()
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`due` next has something to do, or None when nothing is held."""
        ends = [g.ends for g in self._groups.values() if g.last is not None]
        return min(ends) if ends else None
