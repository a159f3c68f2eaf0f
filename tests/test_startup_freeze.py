"""freeze_startup_objects, which the web lifespans of celery, arq and taskiq call
(templates/_partials/startup_freeze.py.jinja), rendered as generated."""

from __future__ import annotations

import gc
import sys
from typing import Any

import pytest

from tests.conftest import partial_module


@pytest.fixture
def module() -> Any:
    generated = partial_module("startup_freeze", "import gc\n")
    yield generated
    del sys.modules[generated.__name__]
    gc.unfreeze()  # this test process goes on as it was


def test_the_first_startup_freezes_what_is_loaded_and_later_ones_leave_it(
    module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert module.FREEZE_STARTUP_OBJECTS is True
    gc.unfreeze()
    module.freeze_startup_objects()
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # this process's modules, at least
    calls: list[str] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    module.freeze_startup_objects()  # a second app's startup, a second TestClient block
    assert calls == []
