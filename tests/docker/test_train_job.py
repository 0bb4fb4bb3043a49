"""The train image's entry point (docker/train.sh) with compose's `train` environment:
raw logs to a served bundle, and the users' histories into a Redis that requires the
compose password. Run from this virtual environment (the train image installs
`.[train,export,serve]`), on the `tiny` preset instead of the compose default `small`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.state.embedded_redis import EmbeddedRedis
from tests.docker.files import (
    COMPOSE,
    DOCKER,
    ENV_EXAMPLE,
    container_command,
    environment,
    read_compose,
    read_dockerfile,
    read_env_file,
)

pytestmark = pytest.mark.slow  # the whole pipeline on `tiny`: about a minute on 2 cores


def test_train_job_writes_the_bundle_and_loads_redis(tmp_path: Path) -> None:
    image = read_dockerfile(DOCKER / "Dockerfile.train").final
    assert container_command(image)[0] == "queryrec-train"
    copied = [i.value.split()[-2:] for i in image.all("COPY") if "train.sh" in i.value]
    assert copied == [["docker/train.sh", "/usr/local/bin/queryrec-train"]]
    service = read_compose(COMPOSE, read_env_file(ENV_EXAMPLE))["services"]["train"]
    arguments = list(service["command"])
    arguments[arguments.index("--preset") + 1] = "tiny"
    arguments[arguments.index("--epochs") + 1] = "1"
    env = {**os.environ, **image.env(), **environment(service)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    bundle = tmp_path / "models" / "bundle"
    arguments += ["--work", str(tmp_path / "pipeline"), "--bundle", str(bundle)]
    with EmbeddedRedis(password=env["QUERYREC_REDIS_PASSWORD"]) as redis_server:
        assert env["QUERYREC_REDIS_URL"].startswith("redis://redis:")
        env["QUERYREC_REDIS_URL"] = redis_server.url
        done = subprocess.run(
            [shutil.which("sh") or "/bin/sh", str(DOCKER / "train.sh"), *arguments],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        import redis

        with redis.Redis.from_url(redis_server.url, password=redis_server.password) as client:
            assert client.dbsize() > 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model_name"] == "queryrec"
    assert (tmp_path / "pipeline" / "data" / "schema.json").is_file()  # the load test's ids
    assert "loaded" in done.stdout
