"""Routes that hand work to FastAPI's BackgroundTasks and answer 202 at once."""

from typing import Literal

from fastapi import APIRouter, BackgroundTasks, Depends
from pydantic import BaseModel, EmailStr, Field

from acme.tasks import notifications as jobs
from acme.tasks.auth import require_task_access
from acme.tasks.email import send_email

router = APIRouter(
    prefix="/notifications",
    tags=["notifications"],
    dependencies=[Depends(require_task_access)],
)


class EmailRequest(BaseModel):
    to: EmailStr
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=10_000)


class NotificationRequest(BaseModel):
    user_id: int = Field(ge=1)
    message: str = Field(min_length=1, max_length=2_000)
    # also email the user when given
    email: EmailStr | None = None


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    detail: str


@router.post("/send-email", status_code=202)
async def send_email_later(
    request: EmailRequest, background_tasks: BackgroundTasks
) -> Accepted:
    """Send an email after the response; failures are logged, never retried."""
    background_tasks.add_task(
        jobs.safely(send_email), str(request.to), request.subject, request.body
    )
    return Accepted(detail="the email will be sent after this response")


@router.post("/process", status_code=202)
async def process_later(
    request: NotificationRequest, background_tasks: BackgroundTasks
) -> Accepted:
    """Process a notification (and email it) after the response, each job isolated."""
    background_tasks.add_task(
        jobs.safely(jobs.process_notification), request.user_id, request.message
    )
    if request.email is not None:
        background_tasks.add_task(
            jobs.safely(send_email),
            str(request.email),
            "New notification",
            request.message,
        )
    return Accepted(detail="the notification will be processed after this response")
