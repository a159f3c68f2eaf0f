"""Images in the project's compose file older than the ones bgtasks generates now.

The run files are the user's once written, so an older image is advice ("update
available"), never a failure of `check`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

# the images the generated compose files use now: repository -> tag
CURRENT_IMAGES = {"redis": "8-alpine", "rabbitmq": "4-alpine", "mher/flower": "2.2.0"}
IMAGE_LINE = re.compile(r"^\s*image:\s*[\"']?(?P<repository>[\w./-]+):(?P<tag>[\w.-]+)", re.M)


@dataclass(frozen=True)
class ImageUpdate:
    where: str
    image: str
    current: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _release(tag: str) -> tuple[int, ...]:
    """The version a tag names: `7-alpine` -> (7,), `3.13-management` -> (3, 13)."""
    match = re.match(r"\d+(\.\d+)*", tag)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def older_images(root: Path) -> list[ImageUpdate]:
    """Every image line of the project's compose files that names an older release of
    an image bgtasks generates (compared as far as the current tag is precise)."""
    from bgtasks_gen.runfiles import COMPOSE_NAMES

    updates = []
    for name in COMPOSE_NAMES:
        path = root / name
        try:
            text = path.read_text(encoding="utf-8") if path.is_file() else ""
        except (OSError, UnicodeDecodeError):
            continue  # the run-file readers refuse it with the reason
        for match in IMAGE_LINE.finditer(text):
            repository, tag = match["repository"], match["tag"]
            current = CURRENT_IMAGES.get(repository)
            if current is None:
                continue
            have, want = _release(tag), _release(current)
            if have and have[: len(want)] < want:
                line = text.count("\n", 0, match.start()) + 1
                updates.append(
                    ImageUpdate(f"{name}:{line}", f"{repository}:{tag}", f"{repository}:{current}")
                )
    return updates
