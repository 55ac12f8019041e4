"""Session fixtures: the tiny DVC project is reproduced once and shared by the pipeline and torchrun tests."""

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tiny_project import build_project, run


@dataclass(frozen=True)
class Reproduced:
    """A tiny project after its first full `dvc repro`: `repo` may be changed by the tests that own it,
    `pristine` is a copy taken right after the run, to be copied and never changed; `output` is what dvc printed."""

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
