"""Tests import the installed package, never the source tree."""
import pathlib
import sys

import v2g_rt

REPO = pathlib.Path(__file__).resolve().parent.parent

# A venv inside the repository (README's .venv) is fine; the source folder is not.
if pathlib.Path(v2g_rt.__file__).resolve().is_relative_to(REPO / "v2g_rt"):
    sys.exit(f"v2g_rt was imported from the source tree ({v2g_rt.__file__}): "
             "`pip install .` and run `pytest` (not `python -m pytest`) from the repo root")


import os  # noqa: E402

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run (CI: fixed seeds, no flakes); set
# HYPOTHESIS_PROFILE=explore to draw new ones while developing.
settings.register_profile("fixed", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))


@pytest.fixture
def repo_root() -> pathlib.Path:
    return REPO
