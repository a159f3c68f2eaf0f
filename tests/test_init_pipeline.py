"""init's stages and the data between them: discover -> plan -> resolve -> write -> verify.

The proofs themselves (resolution with pip, serving the app) have their own tests
(test_resolve.py, test_verify.py); these check what each stage hands on and that a
refusal comes from the stage that can see it, before anything is planned.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bgtasks_gen.errors import BadInput, DiscoveryError
from bgtasks_gen.init_discover import discover_init
from bgtasks_gen.init_pipeline import InitRequest, prepare
from bgtasks_gen.nextsteps import DOCTOR_HINT
from tests.conftest import tree_hashes


def discovered(root: Path, runner: str = "celery", **options: object):  # type: ignore[no-untyped-def]
    defaults: dict[str, object] = {
        "broker": "redis",
        "overrides": None,
        "merge": None,
        "replaces": "",
        "with_features": (),
        "without_features": (),
    }
    return discover_init(root, runner, **{**defaults, **options})  # type: ignore[arg-type]


def test_discover_hands_on_the_layout_features_and_the_features_settings_fields(example) -> None:  # type: ignore[no-untyped-def]
    root = example("factory")
    found = discovered(root, with_features=("sentry",))
    assert found.layout.settings.class_name  # the project's own settings class
    assert found.layout.app.app_var
    # the first init of a queue runner starts with the dashboard, plus what was asked
    assert found.features == ("dashboard", "sentry")
    assert found.recorded_features == ()
    assert "sentry_dsn" in {field.key for field in found.spec.settings_fields}
    assert found.state == {} and found.owned == frozenset()


def test_discover_refuses_an_unknown_broker_before_reading_the_project(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="unknown broker 'kafka'"):
        discovered(tmp_path, broker="kafka")  # an empty folder: no project read at all


def test_discover_refuses_a_second_setup_of_the_same_runner(example) -> None:  # type: ignore[no-untyped-def]
    root = example("factory")
    own = root / "src" / "acme" / "worker.py"
    own.write_text("from celery import Celery\n\ncelery = Celery('acme')\n", encoding="utf-8")
    with pytest.raises(DiscoveryError, match="already has a celery setup at"):
        discovered(root)


def test_prepare_without_proof_plans_and_names_no_environment(example) -> None:  # type: ignore[no-untyped-def]
    root = example("factory")
    before = tree_hashes(root)
    prepared = prepare(InitRequest(root, "arq", with_deps=False, prove=False))
    assert prepared.interpreter is None
    assert prepared.plan.writes
    assert not any(DOCTOR_HINT in step for step in prepared.plan.next_steps)
    assert tree_hashes(root) == before  # planning writes nothing


def test_prepare_without_an_environment_says_doctor_proves_it(example) -> None:  # type: ignore[no-untyped-def]
    root = example("factory")
    prepared = prepare(InitRequest(root, "arq", with_deps=False))
    assert prepared.interpreter is None  # the example has no .venv
    assert any(DOCTOR_HINT in step for step in prepared.plan.next_steps)


def test_prepare_finds_the_environment_to_serve_in(example) -> None:  # type: ignore[no-untyped-def]
    root = example("factory")
    prepared = prepare(InitRequest(root, "arq", with_deps=False, python=Path(sys.executable)))
    assert prepared.interpreter is not None
    assert not any(DOCTOR_HINT in step for step in prepared.plan.next_steps)


def test_a_dry_run_is_never_served(example) -> None:  # type: ignore[no-untyped-def]
    root = example("factory")
    prepared = prepare(
        InitRequest(root, "arq", with_deps=False, writes=False, python=Path(sys.executable))
    )
    assert prepared.interpreter is None
