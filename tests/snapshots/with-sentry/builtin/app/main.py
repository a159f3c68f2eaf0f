from fastapi import FastAPI

from app.api.v1.routes import health, items
from app.api.v1.routes.notifications import router as notifications_router
from app.core.config import settings

app = FastAPI(title=settings.PROJECT_NAME)

app.include_router(health.router)
app.include_router(items.router, prefix=settings.API_V1_PREFIX)
app.include_router(notifications_router)
