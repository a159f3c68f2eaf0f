"""Candidates, the evidence for and against each, and the one ranking that decides.

Discovery does what a reviewer reading the repository does: it collects every candidate
(an app, a settings class), writes down why it might or might not be the one, and takes
the best. Only a real tie at the top is refused, naming the candidates, their evidence
and the override that settles it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bgtasks_gen.errors import DiscoveryError

T = TypeVar("T")

# weights, strongest first: an explicit choice beats anything the code says
OVERRIDE = 1000
CONFIGURED = 500  # [tool.fastapi] entrypoint
SERVED = 100  # a command that runs it (Dockerfile, compose, Procfile, uvicorn.run, ...)
REACHED = 50  # the served app's import closure reaches it
IMPORTED_BY_APP = 20
MODULE_LEVEL = 30
INCLUDES = 20
MOUNTED = -200  # another app mounts it: a sub-app, not what is served
EXCLUDED = -1000  # a test, mock or example path


@dataclass
class Candidate(Generic[T]):
    value: T
    label: str  # how messages name it ("app.main:app")
    evidence: list[tuple[int, str]] = field(default_factory=list)

    def add(self, weight: int, reason: str) -> None:
        self.evidence.append((weight, reason))

    @property
    def score(self) -> int:
        return sum(weight for weight, _ in self.evidence)

    @property
    def because(self) -> str:
        """The strongest reason for it, for notes ("served by Dockerfile CMD")."""
        positive = sorted((e for e in self.evidence if e[0] > 0), key=lambda e: -e[0])
        return positive[0][1] if positive else "the only candidate"

    def summary(self) -> str:
        reasons = "; ".join(reason for _, reason in self.evidence) or "no evidence"
        return f"{self.label} ({reasons})"


def rank(candidates: list[Candidate[T]], what: str, hint: str) -> Candidate[T] | None:
    """The best candidate; None when there is none that is not excluded; a tie is an error."""
    usable = [c for c in candidates if c.score > EXCLUDED // 2]
    if not usable:
        return None
    usable.sort(key=lambda c: -c.score)
    best = usable[0]
    tied = [c for c in usable if c.score == best.score]
    if len(tied) > 1:
        listed = ", ".join(c.summary() for c in tied)
        raise DiscoveryError(f"cannot tell which {what} to use: {listed}", hint)
    return best
