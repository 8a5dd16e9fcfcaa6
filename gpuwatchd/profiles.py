"""Application profiles: the log lines, probe and start grace of popular GPU apps.

A profile is a table of facts, chosen per container by ``profile = "<name>"``
in ``[containers.NAME]`` or, failing that, from the container's image
reference (:func:`profile_for_image`). Every line in a profile only asks for a
confirmation probe: the probe decides whether NVML is really gone. Lines an
app prints for problems a restart cannot cure (KonomiTV's E-06HN, NVENC
sessions used up) are never patterns.

This module is pure: no I/O, no configuration parsing.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from types import MappingProxyType

#: The probe every profile runs: the NVIDIA container toolkit mounts
#: ``nvidia-smi`` into any container whose NVIDIA_DRIVER_CAPABILITIES include
#: ``utility``, so it works in every image below.
NVIDIA_SMI_PROBE: tuple[str, ...] = ("nvidia-smi", "-L")


@dataclass(frozen=True)
class Profile:
    """One application's facts.

    ``patterns``: literal substrings of the app's own lines when CUDA or NVML
    is gone (empty: the app logs nothing useful, probes alone find the fault).
    ``images``: repository paths (registry host included where it is not
    Docker Hub) whose containers get this profile when none is configured.
    """

    name: str
    app: str
    patterns: tuple[str, ...]
    probe_command: tuple[str, ...] = NVIDIA_SMI_PROBE
    start_grace: float = 5.0
    images: tuple[str, ...] = ()


_PROFILES = (
    Profile(
        "konomitv",
        "KonomiTV",
        ("(ER-05)", "(ER-06)", "(E-09HN)"),
        images=("ghcr.io/tsukumijima/konomitv", "tsukumijima/konomitv"),
    ),
    Profile(
        "jellyfin",
        "Jellyfin",
        ("FFmpeg exited with code 187", "cuInit(0) failed"),
        start_grace=10.0,
        images=(
            "jellyfin/jellyfin",
            "ghcr.io/jellyfin/jellyfin",
            "lscr.io/linuxserver/jellyfin",
            "linuxserver/jellyfin",
            "ghcr.io/linuxserver/jellyfin",
        ),
    ),
    Profile(
        "emby",
        "Emby",
        ("FFmpeg exited with code 187", "cuInit(0) failed"),
        start_grace=10.0,
        images=(
            "emby/embyserver",
            "lscr.io/linuxserver/emby",
            "linuxserver/emby",
            "ghcr.io/linuxserver/emby",
        ),
    ),
    Profile(
        "plex",
        "Plex Media Server",
        (),
        start_grace=10.0,
        images=(
            "plexinc/pms-docker",
            "lscr.io/linuxserver/plex",
            "linuxserver/plex",
            "ghcr.io/linuxserver/plex",
        ),
    ),
    Profile(
        "frigate",
        "Frigate",
        ("cuInit(0) failed", "Cannot load libcuda.so.1", "Failed to initialize cuda"),
        start_grace=10.0,
        images=("ghcr.io/blakeblackshear/frigate", "blakeblackshear/frigate"),
    ),
    Profile(
        "immich-ml",
        "Immich machine learning",
        ("CUDA failure 999", "CUDA failure 100"),
        start_grace=10.0,
        images=(
            "ghcr.io/immich-app/immich-machine-learning",
            "altran1502/immich-machine-learning",
        ),
    ),
    Profile(
        "ollama",
        "Ollama",
        (
            "no compatible GPUs were discovered",
            "cuda driver library init failure: 999",
            "ggml_cuda_init: failed to initialize CUDA",
        ),
        images=("ollama/ollama",),
    ),
    Profile(
        "pytorch",
        "PyTorch apps (ComfyUI, Stable Diffusion WebUI, ...)",
        ("CUDA unknown error", "No CUDA GPUs are available"),
        start_grace=10.0,
        images=("pytorch/pytorch",),
    ),
    Profile(
        "tdarr",
        "Tdarr (node)",
        ("CUDA_ERROR_NO_DEVICE",),
        start_grace=10.0,
        images=(
            "ghcr.io/haveagitgat/tdarr",
            "ghcr.io/haveagitgat/tdarr_node",
            "haveagitgat/tdarr",
            "haveagitgat/tdarr_node",
        ),
    ),
    Profile(
        "generic",
        "any CUDA or NVML program",
        ("Failed to initialize NVML", "CUDA_ERROR_", "cuInit(0) failed", "no CUDA-capable device"),
    ),
)

#: Every profile by name, in the order the README lists them.
PROFILES = MappingProxyType({p.name: p for p in _PROFILES})

DOCKER_HUB = "docker.io"
_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")


class UnknownProfile(ValueError):
    """A profile name that is not in :data:`PROFILES`; the message is one line."""


def get_profile(name: str) -> Profile:
    """The profile called ``name``.

    Raises:
        UnknownProfile: for any other name, with a did-you-mean when one is close.
    """
    try:
        return PROFILES[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(name.lower(), list(PROFILES), n=1)
    hint = f'did you mean "{close[0]}"?' if close else "known: " + ", ".join(PROFILES)
    raise UnknownProfile(f"unknown profile {name!r} ({hint})") from None


@dataclass(frozen=True)
class ImageReference:
    """A Docker image reference split into its parts (registry normalised)."""

    registry: str  #: "docker.io" for Docker Hub
    path: str  #: "library/ubuntu", "linuxserver/jellyfin", ... (lower case)
    tag: str = ""
    digest: str = ""

    @property
    def repository(self) -> str:
        """The path as people write it: Docker Hub without host and ``library/``."""
        if self.registry == DOCKER_HUB:
            return self.path.removeprefix("library/")
        return f"{self.registry}/{self.path}"


def parse_image_reference(reference: str) -> ImageReference | None:
    """Split ``[registry[:port]/]path[:tag][@digest]`` as Docker does.

    The first component is a registry when it holds a ``.`` or ``:`` or is
    ``localhost``; otherwise the image is on Docker Hub, and a one-component
    path is in ``library/``. Returns None for an empty reference or a bare
    image ID (``sha256:...``), which names no repository.
    """
    ref = reference.strip()
    if not ref or ref.startswith("sha256:"):
        return None
    name, _, digest = ref.partition("@")
    tag = ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, path_parts = parts[0].lower(), parts[1:]
    else:
        registry, path_parts = DOCKER_HUB, parts
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and len(path_parts) == 1:
        path_parts = ["library", *path_parts]
    path = "/".join(path_parts).lower()
    if not path or any(not p for p in path_parts):
        return None
    return ImageReference(registry, path, tag, digest)


def _image_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for profile in _PROFILES:
        for image in profile.images:
            parsed = parse_image_reference(image)
            assert parsed is not None, image
            index[parsed.repository] = profile.name
    return index


_BY_REPOSITORY = MappingProxyType(_image_index())


def profile_for_image(reference: str) -> str | None:
    """The profile for a container created from image ``reference``, or None.

    Matches the repository only: any tag or digest, Docker Hub spelt with or
    without ``docker.io/``. A reference through a registry mirror or proxy
    (another host) does not match: name the profile in the configuration.
    """
    parsed = parse_image_reference(reference)
    if parsed is None:
        return None
    return _BY_REPOSITORY.get(parsed.repository)
