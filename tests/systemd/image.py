"""Build the Debian bookworm image that boots a real systemd as PID 1.

No image can be pulled on the test machines, so the root filesystem is made
with ``debootstrap --variant=minbase`` from the same Debian mirror apt already
uses, then turned into an image with ``docker import``. The tag carries a hash
of everything that shapes the image (this file, the mirror, the package list),
so the ~50 s build happens once and a change to the recipe rebuilds it.

Run ``python -m tests.systemd.image`` (from the repository root) to build it ahead.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import docker
import docker.errors

REPOSITORY = "gpuwatchd-bench/systemd"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

#: systemd and journald themselves, ``kill`` (procps, for ExecReload), and what
#: ``packaging/install.sh`` needs offline: a venv with Debian's python3-systemd.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "procps",
    "python3",
    "python3-venv",
    "python3-systemd",
)

#: Units that only fail or wait in a container; masked so the system reaches
#: "running" instead of "degraded" and a failed unit in a test means something.
MASKED_UNITS = (
    "systemd-firstboot.service",
    "systemd-udevd.service",
    "systemd-modules-load.service",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "getty.target",
    "console-getty.service",
    "systemd-logind.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
)


def host_mirror() -> str:
    """The Debian mirror this machine's apt uses (so the build reaches it), or the default."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        # deb822 ("URIs: ...") and one-line ("deb URI suite ...") formats.
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = match.group(1).rstrip("/")
            if uri.endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def image_tag(mirror: str | None = None) -> str:
    """The full ``repository:tag`` for the current recipe."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update((mirror or host_mirror()).encode())
    return f"{REPOSITORY}:{digest.hexdigest()[:16]}"


def ensure_image(client: docker.DockerClient) -> str:
    """Return the tag of the systemd image, building it first when it is missing.

    Raises ``subprocess.CalledProcessError`` when debootstrap fails (mirror
    unreachable, not root) and ``docker.errors.APIError`` when the import fails.
    """
    mirror = host_mirror()
    tag = image_tag(mirror)
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        _build(client, tag, mirror)
    return tag


def _build(client: docker.DockerClient, tag: str, mirror: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="gpuwatchd-systemd-image-", dir="/var/tmp"))
    try:
        root = work / "root"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(root),
                mirror,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        subprocess.run(
            ["chroot", str(root), "systemctl", "mask", *MASKED_UNITS],
            check=True,
            capture_output=True,
        )
        # An empty machine-id makes every container generate its own at boot.
        (root / "etc/machine-id").write_text("")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        archive = work / "rootfs.tar"
        subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "-cf", str(archive), "."],
            check=True,
        )
        repository, _, version = tag.partition(":")
        client.api.import_image_from_file(
            str(archive),
            repository=repository,
            tag=version,
            changes=['CMD ["/lib/systemd/systemd"]', "ENV container=docker"],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(ensure_image(docker.from_env()))
