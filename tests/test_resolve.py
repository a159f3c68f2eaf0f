"""The resolve stage of `init`: pip's report and ResolutionImpossible output as pip 26.3
wrote them (captured once under fixtures_resolve/), the project's Python, the time bound,
and the requirement set read from a plan."""

from __future__ import annotations

import json
import shutil
import stat
import time
from pathlib import Path

import pytest

from bgtasks_gen.resolve import (
    CONFLICT,
    UNVERIFIED,
    ResolveRequest,
    Wanted,
    colliding,
    parse_conflict,
    planned_requirements,
    project_python,
    report_packages,
    resolve,
    resolve_timeout,
)
from bgtasks_gen.scaffold import plan_init

FIXTURES = Path(__file__).parent / "fixtures_resolve"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFLICT_OUTPUT = (FIXTURES / "celery57_redis5_conflict.txt").read_text()
UNREACHABLE_OUTPUT = (FIXTURES / "index_unreachable.txt").read_text()

WANTED = (
    Wanted("fastapi>=0.115", "declared in pyproject.toml"),
    Wanted("redis<6", "declared in pyproject.toml"),
    Wanted("celery[redis]>=5.7", "added by bgtasks", added=True),
)


def _fake_pip(tmp_path: Path, output: str, code: int, sleep: float = 0) -> str:
    """An interpreter that answers every `-m pip ...` with `output` and `code`."""
    (tmp_path / "output.txt").write_text(output)
    script = tmp_path / "python"
    answer = f"exec sleep {sleep}" if sleep else f"cat {tmp_path / 'output.txt'} >&2\nexit {code}"
    script.write_text(f"#!/bin/sh\n{answer}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_report_lists_what_would_be_installed() -> None:
    report = json.loads((FIXTURES / "arq_report.json").read_text())
    packages = dict(report_packages(report))
    assert packages["arq"] == "0.28.0"
    assert packages["redis"].startswith("5."), "arq 0.28 keeps redis-py below 6"
    assert len(packages) == 5


def test_resolution_impossible_names_the_two_requirements() -> None:
    collision = parse_conflict(CONFLICT_OUTPUT)
    assert collision is not None
    assert collision.requested == ("redis<6",)
    assert collision.causes[0][0] == "kombu"
    assert "depends on redis<9.0.0 and >=6.4.0" in collision.causes[0][1]
    # kombu came in through celery, as pip's "Collecting ... (from ...)" chain says
    assert collision.roots["kombu"] == "celery[redis]>=5.7"
    pair = colliding(collision, WANTED)
    assert [w.text for w in pair] == ["celery[redis]>=5.7", "redis<6"]


def test_other_failures_are_not_a_conflict() -> None:
    assert parse_conflict(UNREACHABLE_OUTPUT) is None


def test_conflict_refuses_naming_both_and_the_ways_out(tmp_path: Path) -> None:
    request = ResolveRequest(WANTED, "3.11", "test", 30, _fake_pip(tmp_path, CONFLICT_OUTPUT, 1))
    verdict = resolve(request)
    assert verdict.outcome == CONFLICT and verdict.refuses
    assert verdict.collision == ("celery[redis]>=5.7", "redis<6")
    assert "celery[redis]>=5.7 (added by bgtasks)" in verdict.message
    assert "redis<6 (declared in pyproject.toml)" in verdict.message
    assert "another runner" in verdict.hint and "--no-deps" in verdict.hint


def test_unreachable_index_is_a_note_not_a_refusal(tmp_path: Path) -> None:
    request = ResolveRequest(WANTED, "3.11", "test", 30, _fake_pip(tmp_path, UNREACHABLE_OUTPUT, 1))
    verdict = resolve(request)
    assert verdict.outcome == UNVERIFIED and not verdict.refuses
    assert verdict.message.startswith("resolution not verified: pip failed: No matching")


def test_pip_missing_is_a_note(tmp_path: Path) -> None:
    fake = _fake_pip(tmp_path, "/usr/bin/python3: No module named pip\n", 1)
    verdict = resolve(ResolveRequest(WANTED, "3.11", "test", 30, fake))
    assert verdict.outcome == UNVERIFIED
    assert "pip is not installed beside bgtasks" in verdict.message


def test_timeout_is_a_note_within_the_bound(tmp_path: Path) -> None:
    fake = _fake_pip(tmp_path, "", 0, sleep=30)
    started = time.monotonic()
    verdict = resolve(ResolveRequest(WANTED, "3.11", "test", 2, fake))
    elapsed = time.monotonic() - started
    assert verdict.outcome == UNVERIFIED
    assert verdict.message == (
        "resolution not verified: pip did not finish within 2 s (raise BGTASKS_RESOLVE_TIMEOUT)"
    )
    assert elapsed < 10, f"bounded by the timeout, took {elapsed:.1f} s"


def test_timeout_setting() -> None:
    assert resolve_timeout({}) == 60
    assert resolve_timeout({"BGTASKS_RESOLVE_TIMEOUT": "5"}) == 5
    assert resolve_timeout({"BGTASKS_RESOLVE_TIMEOUT": "soon"}) == 60
    assert resolve(ResolveRequest(WANTED, "3.11", "test", 0)).message == ""


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"pyproject.toml": '[project]\nname = "x"\nrequires-python = ">=3.12,<4"\n'}, "3.12"),
        (
            {"pyproject.toml": '[tool.poetry.dependencies]\npython = "^3.10"\n'},
            "3.10",
        ),
        ({"Dockerfile": "FROM python:3.13-slim AS build\nFROM python:3.12-slim\n"}, "3.12"),
        (
            {
                "pyproject.toml": '[project]\nname = "x"\nrequires-python = ">=3.11"\n',
                "Dockerfile": "FROM python:3.13-slim\n",
            },
            "3.11",
        ),
        ({}, "3.9"),
    ],
)
def test_project_python(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert project_python(tmp_path, running=(3, 9))[0] == expected


def test_requirements_after_the_edit_hold_locked_pins(tmp_path: Path) -> None:
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    (project / "uv.lock").write_text(
        'version = 1\n\n[[package]]\nname = "fastapi"\nversion = "0.115.4"\n'
    )
    plan = plan_init(project, "arq")
    wanted = {w.name: w for w in planned_requirements(plan)}
    assert wanted["fastapi"].text == "fastapi==0.115.4"
    assert "uv.lock pins 0.115.4" in wanted["fastapi"].origin
    assert wanted["arq"].added and wanted["arq"].origin == "added by bgtasks"
    assert not wanted["uvicorn"].added
    assert (project / "pyproject.toml").read_text() == (
        EXAMPLES / "layered" / "pyproject.toml"
    ).read_text(), "planning writes nothing"
