"""docker/compose.yaml and the Dockerfiles hang together (parsed; Docker is not needed).

Services, profiles, healthchecks, volumes, build contexts, every copied path, and every
environment variable set: a `QUERYREC_*` one must be a field of `ServiceSettings`, any
other must be on the short list below.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from service.settings import ServiceSettings
from tests.docker.files import (
    COMPOSE,
    COMPOSE_REPLICAS,
    DOCKER,
    DOCKERFILES,
    ENV_EXAMPLE,
    REPO,
    SETTINGS_PREFIX,
    container_command,
    copy_sources,
    duration_s,
    environment,
    healthcheck,
    read_compose,
    read_dockerfile,
    read_env_file,
    variables,
)

KNOWN_SETTINGS = {f"{SETTINGS_PREFIX}{name.upper()}" for name in ServiceSettings.model_fields}
# Variables that are not scorer settings, each for a reason:
OTHER_VARIABLES = {
    "REDISCLI_AUTH",  # redis-cli's password (the redis healthcheck), never on a command line
}
# Image ENV that is not configuration of the service.
IMAGE_VARIABLES = {
    "PATH",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "DEBIAN_FRONTEND",
}
SERVICES = {"redis", "scorer", "train", "loadtest"}


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(example_env: dict[str, str]) -> dict[str, Any]:
    """compose.yaml as Compose sees it with docker/.env copied from .env.example."""
    return read_compose(COMPOSE, example_env)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def test_services_and_profiles(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES
    # redis and the scorer come up with `docker compose up`; the jobs only when asked.
    assert "profiles" not in services["redis"] and "profiles" not in services["scorer"]
    assert services["train"]["profiles"] == ["train"]
    assert services["loadtest"]["profiles"] == ["loadtest"]
    for job in ("train", "loadtest"):
        assert services[job]["restart"] == "no"  # one-shot


def test_redis_is_pinned_persistent_and_password_protected(
    services: dict[str, dict[str, Any]], example_env: dict[str, str]
) -> None:
    redis = services["redis"]
    # An official image with an exact version, never `latest` or a floating major.
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-[a-z0-9.]+)?", redis["image"]), redis["image"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1] == example_env["REDIS_PASSWORD"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in redis["volumes"]}
    assert mounts["/data"] == "redis-data"  # the AOF lives on a named volume
    assert redis["environment"]["REDISCLI_AUTH"] == example_env["REDIS_PASSWORD"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert "ports" not in redis  # only the compose network reaches it


def test_scorer_healthcheck_stop_and_limits(services: dict[str, dict[str, Any]]) -> None:
    scorer = services["scorer"]
    image = read_dockerfile(DOCKER / scorer["build"]["dockerfile"].removeprefix("docker/"))
    assert scorer["depends_on"]["redis"]["condition"] == "service_healthy"
    # The compose healthcheck is the image's, with the same probe command.
    check = healthcheck(image.final)
    assert scorer["healthcheck"]["test"] == ["CMD", *check.command]
    assert duration_s(scorer["healthcheck"]["start_period"]) >= check.start_period_s
    assert scorer["restart"] in ("always", "unless-stopped", "on-failure")
    limits = scorer["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and re.fullmatch(r"\d+[kmg]", limits["memory"])
    env = environment(scorer)
    # One worker process per CPU the container may use (the default would count the host's).
    assert int(env["QUERYREC_WORKERS"]) <= float(limits["cpus"])
    # Stop: the image's STOPSIGNAL, and time for the whole drain before SIGKILL.
    stop_signal = image.final.last("STOPSIGNAL")
    assert stop_signal is not None and scorer["stop_signal"] == stop_signal.value == "SIGTERM"
    fields = ServiceSettings.model_fields
    drain = float(env.get("QUERYREC_DRAIN_DELAY_S", fields["drain_delay_s"].default))
    grace = float(env.get("QUERYREC_SHUTDOWN_GRACE_S", fields["shutdown_grace_s"].default))
    assert duration_s(scorer["stop_grace_period"]) >= drain + grace + 5


def test_scorer_serves_the_bundle_the_train_job_writes(
    services: dict[str, dict[str, Any]],
) -> None:
    scorer, train = services["scorer"], services["train"]
    image = read_dockerfile(DOCKER / "Dockerfile")
    bundle = Path(
        environment(scorer).get("QUERYREC_BUNDLE") or image.final.env()["QUERYREC_BUNDLE"]
    )
    scorer_mounts = [volume.split(":") for volume in scorer["volumes"]]
    assert [str(bundle.parent), "ro"] in [m[1:] for m in scorer_mounts]  # read-only
    volume = next(m[0] for m in scorer_mounts if m[1] == str(bundle.parent))
    assert f"{volume}:{bundle.parent}" in train["volumes"]  # the same volume, writable
    script = (DOCKER / "train.sh").read_text()
    assert f"bundle={bundle}\n" in script
    assert "queryrec export" in script and "queryrec state load" in script
    # The load test reads the dataset the train job prepared (the mix's ids).
    loadtest = services["loadtest"]
    assert "pipeline:/pipeline" in train["volumes"]
    assert "pipeline:/pipeline:ro" in loadtest["volumes"]
    assert "work=/pipeline\n" in script and '"$work/data"' in script
    command = loadtest["command"]
    assert command[command.index("--data") + 1] == "/pipeline/data"
    assert command[command.index("--target") + 1] == "scorer:50051"
    assert loadtest["depends_on"]["scorer"]["condition"] == "service_healthy"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == set(compose["volumes"])


def test_builds_and_copied_paths_exist(services: dict[str, dict[str, Any]]) -> None:
    built = set()
    for name, service in services.items():
        if "build" not in service:
            continue
        context = (COMPOSE.parent / service["build"]["context"]).resolve()
        assert context == REPO, name
        dockerfile = context / service["build"]["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile}"
        built.add(dockerfile)
    # Every Dockerfile but the GPU one is built by the stack (that one: docs/deployment.md "GPU").
    assert built == set(DOCKERFILES) - {DOCKER / "Dockerfile.gpu"}
    for dockerfile in DOCKERFILES:
        for stage in read_dockerfile(dockerfile).stages:
            for instruction in stage.all("COPY") + stage.all("ADD"):
                for source in copy_sources(instruction):
                    assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}"


def test_every_variable_set_is_a_known_setting(example_env: dict[str, str]) -> None:
    for path in (COMPOSE, COMPOSE_REPLICAS):
        for name, service in read_compose(path, example_env)["services"].items():
            for variable in environment(service):
                allowed = variable in KNOWN_SETTINGS or variable in OTHER_VARIABLES
                assert allowed, f"{path.name}: {name} sets {variable}, not a setting"
    for dockerfile in DOCKERFILES:
        for stage in read_dockerfile(dockerfile).stages:
            for variable in stage.env():
                allowed = variable in KNOWN_SETTINGS or variable in IMAGE_VARIABLES
                assert allowed, f"{dockerfile.name}: ENV {variable}, not a setting"


def test_env_example_defines_every_interpolated_variable(example_env: dict[str, str]) -> None:
    used = variables(COMPOSE.read_text()) | variables(COMPOSE_REPLICAS.read_text())
    assert used <= set(example_env), used - set(example_env)
    # Its keys are interpolation inputs; those named like settings really are settings.
    for key in example_env:
        assert not key.startswith(SETTINGS_PREFIX) or key in KNOWN_SETTINGS, key
    assert (DOCKER / ".gitignore").read_text().splitlines().count(".env") == 1


def test_serving_images_share_the_entry_point_and_probe() -> None:
    cpu = read_dockerfile(DOCKER / "Dockerfile")
    gpu = read_dockerfile(DOCKER / "Dockerfile.gpu")
    assert container_command(cpu.final) == container_command(gpu.final) == ["queryrec", "serve"]
    assert healthcheck(cpu.final).command == healthcheck(gpu.final).command
    assert gpu.final.base.startswith("nvidia/cuda:") and "runtime" in gpu.final.base
    for image in (cpu, gpu):
        assert len(image.stages) >= 2  # built in one stage, run from another
        user = image.final.last("USER")
        assert user is not None and user.value not in ("root", "0")
        exposed = {port for i in image.final.all("EXPOSE") for port in i.value.split()}
        env = image.final.env()
        assert {env["QUERYREC_PORT"], env["QUERYREC_ADMIN_PORT"]} <= exposed
        assert env["QUERYREC_BUNDLE"] == "/models/bundle"
        installs = " ".join(i.value for s in image.stages for i in s.all("RUN"))
        assert "torch" not in installs.replace("find_spec('torch')", "")


def test_images_install_from_pyproject_only() -> None:
    """No second dependency list: each image pip-installs the project with extras."""
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert "requirements" not in text, dockerfile.name
        installs = re.findall(r"pip install (?:--[\w-]+(?: \"[^\"]+\")? )*'\.\[([\w,]+)\]'", text)
        assert len(installs) == 1, dockerfile.name
    serve = re.findall(r"'\.\[([\w,]+)\]'", (DOCKER / "Dockerfile").read_text())
    assert serve == ["serve"]


def test_replicas_example_publishes_no_host_port(example_env: dict[str, str]) -> None:
    override = read_compose(COMPOSE_REPLICAS, example_env)["services"]
    assert set(override) == {"scorer"}
    assert override["scorer"]["ports"] == []
    assert override["scorer"]["deploy"]["replicas"] > 1


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_build_context_sends_what_the_image_copies(dockerfile: Path) -> None:
    """BuildKit's per-Dockerfile ignore file (`<Dockerfile>.dockerignore`) keeps .venv and
    the work folders out of the context, and lets every COPY source through."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    lines = [line.strip() for line in ignore.read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"  # everything out, then what the images need back in
    included = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    for stage in read_dockerfile(dockerfile).stages:
        for instruction in stage.all("COPY"):
            for source in copy_sources(instruction):
                assert source.rstrip("/") in included, f"{ignore.name} leaves out {source}"
