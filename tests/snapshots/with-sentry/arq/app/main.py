from fastapi import FastAPI

from app.api.v1.routes import health, items
from app.api.v1.routes.arq_tasks import router as arq_tasks_router
from app.core.config import settings

app = FastAPI(title=settings.PROJECT_NAME)

app.include_router(health.router)
app.include_router(items.router, prefix=settings.API_V1_PREFIX)
app.include_router(arq_tasks_router)
