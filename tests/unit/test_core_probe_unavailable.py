"""``probe_unavailable`` means what it says: it lasts only until a probe runs again,
and verification by silence applies only where probes are off by configuration."""

from __future__ import annotations

from gpuwatchd.model.events import ProbePurpose, ProbeTick, RunProbe
from gpuwatchd.model.vocabulary import ProbeResult

from .core_harness import GPU0, KONOMI, Harness, make_config, of, records


def _watched() -> Harness:
    h = Harness(config=make_config(cooldown=1.0))
    h.gpus(GPU0)
    h.watch()
    return h


def _timer_probe(h: Harness, result: ProbeResult) -> None:
    h.later(1)
    assert of(h.send(ProbeTick(KONOMI)), RunProbe)
    h.answer(result, exit_code=126 if result is ProbeResult.PROBE_UNAVAILABLE else None)


def _restart_and_verify(h: Harness) -> list[str]:
    """A fault, a restart; returns what the verification did (probe purposes and records)."""
    h.fault()
    out = h.finish_restart()
    out += h.later(1)
    seen = [a.purpose.value for a in of(out, RunProbe) if isinstance(a, RunProbe)]
    if ProbePurpose.VERIFY.value in seen:
        out += h.answer(ProbeResult.OK)
    out += h.later(120)
    return seen + [r.event for r in records(out)]


def test_a_transient_probe_unavailable_clears_when_a_probe_runs_again() -> None:
    h = _watched()
    _timer_probe(h, ProbeResult.PROBE_UNAVAILABLE)  # a transient "OCI runtime exec failed"
    _timer_probe(h, ProbeResult.OK)
    done = _restart_and_verify(h)
    # Verified by a probe that passed, never by silence.
    assert "verify" in done
    recovered = [r for r in h.all_records() if r.event == "container_recovered"]
    assert len(recovered) == 1 and recovered[0].fields["result"] == "ok"


def test_it_warns_again_after_it_cleared() -> None:
    h = _watched()
    _timer_probe(h, ProbeResult.PROBE_UNAVAILABLE)
    _timer_probe(h, ProbeResult.OK)
    _timer_probe(h, ProbeResult.PROBE_UNAVAILABLE)
    assert h.count("probe_unavailable") == 2


def test_probes_unavailable_during_verification_never_verify_by_silence() -> None:
    h = _watched()
    h.fault()
    h.finish_restart()
    h.later(1)
    h.answer(ProbeResult.PROBE_UNAVAILABLE, exit_code=126)
    for _ in range(120):
        for probe in of(h.later(1), RunProbe):
            assert isinstance(probe, RunProbe)
            h.answer(ProbeResult.PROBE_UNAVAILABLE, exit_code=126)
    assert h.count("container_recovered") == 0  # nothing proved it healed
    assert h.count("remediation_failed") == 1
