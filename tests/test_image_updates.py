"""`check` tells of older images in the project's compose file as advice, not failure."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bgtasks_gen.image_updates import CURRENT_IMAGES, IMAGE_LINE, _release, older_images
from tests.conftest import REPO, invoke


def test_the_generated_compose_files_use_the_current_images() -> None:
    seen = set()
    for template in (REPO / "templates").glob("*/run/compose.yaml.jinja"):
        for match in IMAGE_LINE.finditer(template.read_text()):
            repository, tag = match["repository"], match["tag"]
            assert repository in CURRENT_IMAGES, f"{template}: {repository} is not tracked"
            assert _release(tag) == _release(CURRENT_IMAGES[repository]), template
            seen.add(repository)
    assert seen == set(CURRENT_IMAGES)


def test_older_images_are_found_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "compose.yaml").write_text(
        "services:\n"
        "  redis:\n    image: redis:7-alpine\n"
        "  mq:\n    image: 'rabbitmq:3.13-management-alpine'\n"
        "  flower:\n    image: mher/flower:2.0.1\n"
        "  cache:\n    image: redis:8.2-alpine\n"
        "  db:\n    image: postgres:12\n"
    )
    found = {(u.where, u.image, u.current) for u in older_images(tmp_path)}
    assert found == {
        ("compose.yaml:3", "redis:7-alpine", "redis:8-alpine"),
        ("compose.yaml:5", "rabbitmq:3.13-management-alpine", "rabbitmq:4-alpine"),
        ("compose.yaml:7", "mher/flower:2.0.1", "mher/flower:2.2.0"),
    }


def test_check_passes_and_says_an_update_is_available(example) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    code, output = invoke("init", str(project), "--runner", "celery")
    assert code == 0, output
    compose = project / "compose.yaml"
    compose.write_text(re.sub(r"image: redis:\S+", "image: redis:7-alpine", compose.read_text()))
    code, output = invoke("check", str(project))
    assert code == 0, output
    assert "update available: redis:7-alpine -> redis:8-alpine" in output
    code, output = invoke("check", str(project), "--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["ok"] is True
    assert [u["image"] for u in report["updates_available"]] == ["redis:7-alpine"]
