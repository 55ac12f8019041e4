from collections.abc import Callable

import pytest

from semalign.evaluation.results import ItemResult


@pytest.fixture
def results_of() -> Callable[..., list[ItemResult]]:
    """Item results `<prefix>/<i>` right or wrong as `correct` says (1/0), with nothing else recorded."""

    def build(correct, prefix="t"):
        return [ItemResult(f"{prefix}/{i}", bool(c), "", {}) for i, c in enumerate(correct)]

    return build
