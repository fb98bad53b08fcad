"""Shared test helpers: the real recordings in ../shared/data (skipped when absent)."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("LATENTJAX_SHARED_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)


@pytest.fixture(scope="session")
def shared_file():
    """`shared_file("peyrache_hd/dataHD.mat")` -> its path, or skip the test with a message."""

    def find(relative: str) -> Path:
        path = SHARED_DATA / relative
        if not path.exists():
            pytest.skip(
                f"real data {relative} not found under {SHARED_DATA} (set LATENTJAX_SHARED_DATA)"
            )
        return path

    return find
