"""The bench images, built with ``docker import`` from an assembled root file system.

No registry is reachable, so each image is a tar of busybox-static, the
workload script and (``konomi`` only) the glibc files the stand-in
``nvidia-smi`` needs.  ``nvidia-smi`` and ``libnvidia-ml.so.1`` are not in
the images: they are bind-mounted at run time, as the NVIDIA container
toolkit does (see :meth:`tests.bench.gpu.GpuController.run_kwargs`).

An image is tagged with a hash of its inputs and imported only when an engine
lacks that tag, so it is built once and reused while its inputs are unchanged.

Run ``python -m tests.bench.images`` to build the tars and import them into
the engine ``DOCKER_HOST`` names.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
#: Where builds go (ignored by git); shared by every run from this checkout.
BENCH_DIR = REPO / ".bench"
BUILD_DIR = BENCH_DIR / "build"
IMAGE_DIR = BENCH_DIR / "images"
REPOSITORY = "gpuwatchd-bench"
#: Bump to force a rebuild when the layout below changes.
LAYOUT_VERSION = "3"
KINDS = ("konomi", "nosmi")


@dataclass(frozen=True)
class BuiltImage:
    """One bench image: its kind, its tag (``gpuwatchd-bench/<kind>:<hash>``) and its tar."""

    kind: str
    tag: str
    tar: Path


def build_native(out: Path = BUILD_DIR) -> None:
    """Builds the stand-in library and nvidia-smi with ``make`` (a no-op when up to date).

    Raises:
        RuntimeError: when make fails; the message carries its output.
    """
    proc = subprocess.run(
        ["make", "-s", "-C", str(HERE), f"OUT={out}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the bench failed:\n{proc.stdout}{proc.stderr}")


def _busybox() -> Path:
    path = shutil.which("busybox")
    if path is None:
        raise RuntimeError("busybox not found: install busybox-static (scripts/test does)")
    return Path(path).resolve()


def _glibc_files(binary: Path) -> list[tuple[str, Path]]:
    """The (path in image, host file) pairs ``binary`` needs, from ``ldd``."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    files: list[tuple[str, Path]] = []
    for line in out.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            path = match.group(1)
            files.append((path, Path(path).resolve()))
    return files


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name.lstrip("/"))
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name.lstrip("/"))
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name.lstrip("/"))
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def _rootfs(kind: str, smi: Path) -> bytes:
    """Assembles the root file system of one image kind as tar bytes (deterministic)."""
    busybox = _busybox()
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in (
            "bin", "dev", "etc", "lib", "lib64", "proc", "root", "run", "sys", "usr",
            "usr/bin", "usr/lib", "usr/lib/x86_64-linux-gnu", "usr/local", "usr/local/bin",
            "var", "var/lib", "var/lib/fake-nvml", "var/log", "var/log/fake-nvml",
        ):  # fmt: skip
            _add_dir(tar, d)
        _add_dir(tar, "tmp", 0o1777)
        _add_file(tar, "bin/busybox", busybox.read_bytes(), 0o755)
        for applet in sorted(set(applets)):
            if applet != "busybox":
                _add_symlink(tar, f"bin/{applet}", "busybox")
        _add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        _add_file(tar, "etc/group", b"root:x:0:\n")
        _add_file(tar, "usr/local/bin/workload", (HERE / "workload.sh").read_bytes(), 0o755)
        if kind == "konomi":
            seen: set[str] = set()
            for name, host in _glibc_files(smi):
                if name in seen:
                    continue
                seen.add(name)
                parent = str(Path(name).parent).lstrip("/")
                if parent not in ("lib64", "usr/lib/x86_64-linux-gnu"):
                    _add_dir(tar, parent)
                _add_file(tar, name, host.read_bytes(), 0o755)
    return buf.getvalue()


def _changes(kind: str) -> list[str]:
    probe = "1" if kind == "konomi" else "0"
    return [
        'ENTRYPOINT ["/bin/sh", "/usr/local/bin/workload"]',
        "ENV PATH=/usr/local/bin:/usr/bin:/bin",
        f"ENV WORKLOAD_PROBE={probe}",
        "WORKDIR /",
        f"LABEL gpuwatchd-bench.image={kind}",
    ]


def build_tars(out: Path = IMAGE_DIR, build: Path = BUILD_DIR) -> dict[str, BuiltImage]:
    """Assembles each image kind's tar (reused when present) and returns them by kind."""
    out.mkdir(parents=True, exist_ok=True)
    smi = build / "bin" / "nvidia-smi"
    images: dict[str, BuiltImage] = {}
    for kind in KINDS:
        data = _rootfs(kind, smi)
        digest = hashlib.sha256()
        digest.update(f"{LAYOUT_VERSION}\n{kind}\n".encode())
        digest.update("\n".join(_changes(kind)).encode())
        digest.update(data)
        tag = f"{REPOSITORY}/{kind}:{digest.hexdigest()[:16]}"
        tar = out / f"{kind}-{digest.hexdigest()[:16]}.tar"
        if not tar.exists():
            # Write then rename: another run from this checkout may read it now.
            tmp = tar.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            tmp.rename(tar)
        images[kind] = BuiltImage(kind, tag, tar)
    return images


def ensure_imported(client: docker.DockerClient, images: dict[str, BuiltImage]) -> None:
    """Imports each image into the engine ``client`` talks to, unless it has the tag already."""
    for image in images.values():
        try:
            client.images.get(image.tag)
            continue
        except docker.errors.ImageNotFound:
            pass
        # The tag goes in the repository: Podman's compat import ignores ``tag``.
        client.api.import_image_from_file(
            str(image.tar), repository=image.tag, changes=_changes(image.kind)
        )
        client.images.get(image.tag)  # raises if the import did not produce it


def main() -> None:
    """Builds everything and imports the images into the engine DOCKER_HOST names."""
    build_native()
    images = build_tars()
    client = docker.from_env()
    try:
        ensure_imported(client, images)
    finally:
        client.close()
    for image in images.values():
        print(image.tag)


if __name__ == "__main__":
    main()
