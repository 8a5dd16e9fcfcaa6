"""Application profiles: the table, image references, and config precedence."""

from __future__ import annotations

import pytest

from gpuwatchd.config import (
    PROFILE_CONFIGURED,
    PROFILE_FROM_IMAGE,
    ConfigError,
    load_config_text,
    render_effective,
)
from gpuwatchd.patterns import LogPattern
from gpuwatchd.profiles import (
    PROFILES,
    ImageReference,
    UnknownProfile,
    get_profile,
    parse_image_reference,
    profile_for_image,
)

NAMES = (
    "konomitv", "jellyfin", "emby", "plex", "frigate",
    "immich-ml", "ollama", "pytorch", "tdarr", "generic",
)


def test_the_profile_names_are_the_public_ones() -> None:
    assert tuple(PROFILES) == NAMES


def test_no_profile_has_a_non_fault_line() -> None:
    """KonomiTV's E-06HN (NVENC sessions used up) is no NVML fault: never a pattern."""
    for profile in PROFILES.values():
        for pattern in profile.patterns:
            assert "E-06HN" not in pattern
            assert "NVENC のエンコードセッション" not in pattern
            LogPattern(pattern)  # each compiles and matches not every line


@pytest.mark.parametrize(
    ("line", "profile"),
    [
        ("[INFO] [Live: gr041-1080p] [Status: Restart] チューナーとの接続が切断されました。"
         "エンコードタスクを再起動しています… (ER-05)", "konomitv"),
        ("[INFO] [Live: gr041-1080p] [Status: Restart] エンコーダーが強制終了されました。"
         "エンコードタスクを再起動しています… (ER-06)", "konomitv"),
        ("[INFO] [Live: gr041-1080p] [Status: Offline] お使いの PC 環境は NVEncC "
         "エンコーダーに対応していません。(E-09HN)", "konomitv"),
        ("[ERR] [42] MediaBrowser.MediaEncoding.Transcoding.TranscodeManager: "
         "FFmpeg exited with code 187", "jellyfin"),
        ("[AVHWDeviceContext @ 0x55d0c0] cu->cuInit(0) failed -> CUDA_ERROR_UNKNOWN: "
         "unknown error", "frigate"),
        ("CUDA failure 999: unknown error ; GPU=0 ; expr=cudaSetDevice(info_.device_id);",
         "immich-ml"),
        ('level=WARN source=gpu.go:605 msg="unknown error initializing cuda driver library '
         '/usr/lib/x86_64-linux-gnu/libcuda.so.1: cuda driver library init failure: 999."',
         "ollama"),
        ('level=INFO source=gpu.go:377 msg="no compatible GPUs were discovered"', "ollama"),
        ("RuntimeError: CUDA unknown error - this may be due to an incorrectly set up "
         "environment", "pytorch"),
        ("RuntimeError: No CUDA GPUs are available", "pytorch"),
        ("[hevc_nvenc @ 0x5] dl_fn->cuda_dl->cuInit(0) failed -> CUDA_ERROR_NO_DEVICE: "
         "no CUDA-capable device is detected", "tdarr"),
        ("Failed to initialize NVML: Unknown Error", "generic"),
    ],
)
def test_each_profile_matches_its_apps_line(line: str, profile: str) -> None:
    patterns = [LogPattern(p) for p in PROFILES[profile].patterns]
    assert any(p.matches(line) for p in patterns)


def test_e06hn_matches_no_profile() -> None:
    line = ("[INFO] [Live: gr041-1080p] [Status: Offline] NVENC のエンコードセッションが"
            "不足しているため、エンコードを開始できません。(E-06HN)")
    for profile in PROFILES.values():
        assert not any(LogPattern(p).matches(line) for p in profile.patterns), profile.name


def test_plex_has_no_patterns_but_a_probe() -> None:
    assert PROFILES["plex"].patterns == ()
    assert PROFILES["plex"].probe_command == ("nvidia-smi", "-L")


def test_unknown_profile_suggests_the_closest() -> None:
    with pytest.raises(UnknownProfile, match='did you mean "jellyfin"'):
        get_profile("jellyfn")
    with pytest.raises(UnknownProfile, match="known: konomitv, jellyfin"):
        get_profile("zzzzzz")


# -- image references ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("ubuntu", ImageReference("docker.io", "library/ubuntu")),
        ("docker.io/library/ubuntu:22.04", ImageReference("docker.io", "library/ubuntu", "22.04")),
        ("index.docker.io/ollama/ollama", ImageReference("docker.io", "ollama/ollama")),
        ("localhost:5000/team/app:1.2@sha256:" + "a" * 64,
         ImageReference("localhost:5000", "team/app", "1.2", "sha256:" + "a" * 64)),
        ("localhost/app", ImageReference("localhost", "app")),
        ("Jellyfin/Jellyfin:10.9", ImageReference("docker.io", "jellyfin/jellyfin", "10.9")),
        ("registry.example.net:8443/a/b/c", ImageReference("registry.example.net:8443", "a/b/c")),
    ],
)
def test_parse_image_reference(reference: str, expected: ImageReference) -> None:
    assert parse_image_reference(reference) == expected


@pytest.mark.parametrize("reference", ["", "  ", "sha256:" + "b" * 64, "a//b", "/x"])
def test_references_that_name_no_repository(reference: str) -> None:
    assert parse_image_reference(reference) is None
    assert profile_for_image(reference) is None


DIGEST = "@sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("reference", "profile"),
    [
        ("ghcr.io/tsukumijima/konomitv:latest", "konomitv"),
        ("ghcr.io/tsukumijima/konomitv" + DIGEST, "konomitv"),
        ("jellyfin/jellyfin", "jellyfin"),
        ("docker.io/jellyfin/jellyfin:10.10.7", "jellyfin"),
        ("jellyfin/jellyfin:latest" + DIGEST, "jellyfin"),
        ("lscr.io/linuxserver/jellyfin:latest", "jellyfin"),
        ("linuxserver/jellyfin", "jellyfin"),
        ("ghcr.io/blakeblackshear/frigate:stable-tensorrt", "frigate"),
        ("ghcr.io/blakeblackshear/frigate:0.14.1" + DIGEST, "frigate"),
        ("ollama/ollama", "ollama"),
        ("docker.io/ollama/ollama:0.5.7", "ollama"),
        ("ghcr.io/immich-app/immich-machine-learning:release-cuda", "immich-ml"),
        ("plexinc/pms-docker:beta", "plex"),
        ("lscr.io/linuxserver/plex", "plex"),
        ("emby/embyserver:latest", "emby"),
        ("linuxserver/emby", "emby"),
        ("ghcr.io/haveagitgat/tdarr:latest", "tdarr"),
        ("ghcr.io/haveagitgat/tdarr_node:2.27.01", "tdarr"),
        ("pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime", "pytorch"),
    ],
)
def test_profile_from_image(reference: str, profile: str) -> None:
    assert profile_for_image(reference) == profile


@pytest.mark.parametrize(
    "reference",
    [
        "ubuntu:22.04",
        "docker.io/library/jellyfin",  # an official-image path that does not exist
        "ghcr.io/jellyfin/jellyfin-web",  # a prefix of a known path is another image
        "registry.example.net:5000/jellyfin/jellyfin",  # a mirror: name the profile
        "nvidia/cuda:12.4.1-base-ubuntu22.04",
        "ghcr.io/immich-app/immich-server:release",
        "gpuwatchd-bench/konomi:0123abcd",
    ],
)
def test_unknown_images_get_no_profile(reference: str) -> None:
    assert profile_for_image(reference) is None


# -- config precedence -------------------------------------------------------------------

CONFIG = """
[probe]
command = ["/usr/local/bin/check-gpu"]
start_grace = "2s"
[logs]
patterns = ["GLOBAL"]
[remediation]
action = "notify"
[containers.tv]
profile = "konomitv"
[containers.tv2]
profile = "konomitv"
patterns = ["OWN"]
probe_command = ["own-probe"]
start_grace = "1m"
action = "restart"
[containers.plain]
probe_interval = "30s"
"""


def test_profile_beats_globals_and_own_keys_beat_the_profile() -> None:
    config = load_config_text(CONFIG)
    tv = config.for_container("tv")
    assert tv.profile == "konomitv" and tv.profile_source == PROFILE_CONFIGURED
    assert [p.source for p in tv.patterns] == ["(ER-05)", "(ER-06)", "(E-09HN)"]
    assert tv.probe_command == ("nvidia-smi", "-L")
    assert tv.start_grace == 5.0
    assert tv.action == "notify"  # no profile sets an action: the global one

    own = config.for_container("tv2", image="jellyfin/jellyfin")
    assert own.profile == "konomitv"  # configured beats the image
    assert [p.source for p in own.patterns] == ["OWN"]
    assert own.probe_command == ("own-probe",)
    assert own.start_grace == 60.0
    assert own.action == "restart"


def test_image_picks_a_profile_when_none_is_configured() -> None:
    config = load_config_text(CONFIG)
    plain = config.for_container("plain", image="lscr.io/linuxserver/jellyfin:10.10.7")
    assert plain.profile == "jellyfin" and plain.profile_source == PROFILE_FROM_IMAGE
    assert [p.source for p in plain.patterns] == list(PROFILES["jellyfin"].patterns)
    assert plain.probe_interval == 30.0  # its own key
    unnamed = config.for_container("other", image="ollama/ollama")
    assert unnamed.profile == "ollama"


def test_no_profile_and_no_known_image_gets_the_globals() -> None:
    config = load_config_text(CONFIG)
    for image in ("", "ubuntu", "gpuwatchd-bench/konomi:abc"):
        s = config.for_container("plain", image=image)
        assert s.profile is None and s.profile_source is None
        assert [p.source for p in s.patterns] == ["GLOBAL"]
        assert s.probe_command == ("/usr/local/bin/check-gpu",)
        assert s.start_grace == 2.0
        assert s.action == "notify"


def test_default_action_is_restart() -> None:
    assert load_config_text("").for_container("x").action == "restart"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[containers.tv]\nprofile = "jellyfn"\n',
         "<config>: containers.tv.profile: unknown profile 'jellyfn' "
         '(did you mean "jellyfin"?)'),
        ('[containers.tv]\nprofile = 3\n',
         "<config>: containers.tv.profile: must be a profile name (a string), got 3"),
        ('[containers.tv]\naction = "kill"\n',
         '<config>: containers.tv.action: must be "restart" or "notify", got "kill"'),
        ('[remediation]\naction = "Notify"\n',
         '<config>: remediation.action: must be "restart" or "notify", got "Notify"'),
        ('[containers.tv]\nprofil = "plex"\n',
         '<config>: containers.tv.profil: unknown key (did you mean "profile"?)'),
    ],
)
def test_profile_and_action_mistakes_are_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_check_config_prints_profile_and_effective_patterns() -> None:
    config = load_config_text(CONFIG + '[watch]\ncontainers = ["KonomiTV"]\n')
    text = render_effective(config)
    assert 'profile = "konomitv"' in text
    assert "#   tv: profile konomitv (configured); action notify" in text
    assert '#     patterns: "(ER-05)", "(ER-06)", "(E-09HN)"' in text
    assert "#   KonomiTV: profile none" in text
    assert '#     patterns: "GLOBAL"' in text
    # The comments change nothing: the document loads back to the same config.
    assert load_config_text(text).containers == config.containers
    assert "\\u" not in render_effective(config)
    ascii_text = render_effective(load_config_text('[logs]\npatterns = ["(ER-05) 切断"]\n'
                                                   '[watch]\ncontainers = ["a1"]\n'),
                                  ascii_only=True)
    assert ascii_text.isascii()
