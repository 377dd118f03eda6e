"""Fixtures of the folder / distribution / exec tests."""
from __future__ import annotations

from pathlib import Path

import pytest
from generic_projects import write_project


@pytest.fixture
def project(tmp_path) -> Path:
    return write_project(tmp_path / "project")
