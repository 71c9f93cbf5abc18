"""Tests import the installed package, never the source tree."""
import pathlib
import sys

import v2g_rt

REPO = pathlib.Path(__file__).resolve().parent.parent

# A venv inside the repository (README's .venv) is fine; the source folder is not.
if pathlib.Path(v2g_rt.__file__).resolve().is_relative_to(REPO / "v2g_rt"):
    sys.exit(f"v2g_rt was imported from the source tree ({v2g_rt.__file__}): "
             "`pip install .` and run `pytest` (not `python -m pytest`) from the repo root")


import pytest  # noqa: E402


@pytest.fixture
def repo_root() -> pathlib.Path:
    return REPO
