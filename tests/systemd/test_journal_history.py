"""diagnose reads what gpuwatchd did from its records in a real journald, when
neither a daemon nor a state file is there to ask."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.systemd.conftest import SystemdBox

pytestmark = [pytest.mark.systemd, pytest.mark.docker]

#: Where install.sh puts gpuwatchd's virtual environment (with google-re2 and systemd-python).
INSTALLED = "/opt/gpuwatchd"

SEND = """
from gpuwatchd.sinks.journal import send
name = {name!r}
for event, extra in (
    ("container_restarted", {{"confidence": "certain", "dry_run": False}}),
    ("container_recovered", {{"result": "ok", "dry_run": False}}),
    ("container_restarted", {{"confidence": "certain", "dry_run": True}}),
):
    send({{"event": event, "level": "warning", "container": name, "cause": "persistence_off",
          "message": event, **extra}}, {{}})
"""

READ = """
import json
from pathlib import Path
from gpuwatchd.config import Config, DaemonConfig
from gpuwatchd.diagnose.facts import daemon_history
config = Config(daemon=DaemonConfig(Path("/nonexistent/state"), Path("/nonexistent/run"), False))
h = daemon_history(config)
print(json.dumps({{"source": h.facts.source,
                  "entries": [e.to_json() for e in h.entries.get({name!r}, ())]}}))
"""


def test_diagnose_reads_gpuwatchds_records_from_the_journal(installed_box: SystemdBox) -> None:
    """Records sent as the daemon sends them; a dry-run one is not history."""
    name = f"KonomiTV-{uuid.uuid4().hex[:8]}"
    python = f"{INSTALLED}/bin/python"
    rc, out = installed_box.sysexec([python, "-c", SEND.format(name=name)])
    assert rc == 0, out
    installed_box.sysexec(["journalctl", "--sync"])
    rc, out = installed_box.sysexec([python, "-c", READ.format(name=name)])
    assert rc == 0, out
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["source"] == "journal"
    assert [(e["event"], e["cause"], e.get("detail")) for e in doc["entries"]] == [
        ("restarted", "persistence_off", "certain"),
        ("recovered", "persistence_off", "ok"),
    ]
