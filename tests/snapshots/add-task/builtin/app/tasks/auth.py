"""Who may queue background work. Applied to every generated task route."""

from fastapi import Request


async def require_task_access(request: Request) -> None:
    """Allow or refuse a request to a task route; raise HTTPException to refuse.

    As generated it allows every request. Replace the body with your project's check
    (a user dependency, an API key header, ...) before exposing these routes: an open
    email endpoint is an open relay. This is also the place for rate limiting.
    """
    return None
