from fastapi import FastAPI

from app.api.v1.routes import health, items
from app.core.config import settings

app = FastAPI(title=settings.PROJECT_NAME)

app.include_router(health.router)
app.include_router(items.router, prefix=settings.API_V1_PREFIX)
