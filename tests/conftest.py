"""Session fixtures: the tiny DVC project is reproduced once and shared by the pipeline and torchrun tests; an
S3 bucket on a local moto server for the stores kept at URLs."""

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pytest
from moto.server import ThreadedMotoServer

from tiny_project import build_project, run


@dataclass(frozen=True)
class Reproduced:
    """A tiny project after its first full `dvc repro`: `repo` may be changed by the tests that own it,
    `pristine` is a copy taken right after the run, to be copied and never changed; `output` is what dvc
    printed."""

    repo: Path
    pristine: Path
    output: str


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory) -> Reproduced:
    repo = build_project(tmp_path_factory.mktemp("pipeline"))
    output = run([sys.executable, "-m", "dvc", "repro"], repo)
    pristine = tmp_path_factory.mktemp("pristine") / "repo"
    shutil.copytree(repo, pristine, symlinks=True)
    return Reproduced(repo, pristine, output)


@pytest.fixture(scope="session")
def s3_bucket() -> Iterator[str]:
    """An S3 bucket on a local moto server, reachable from this process and its subprocesses (torchrun ranks)
    through the standard AWS environment variables: `s3://<bucket>`."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    environment = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("semalign-test")
    yield "s3://semalign-test"
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
