from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from acme.api.router import api_router
from acme.api.taskiq_tasks import router as taskiq_tasks_router
from acme.core.settings import get_settings


def create_app() -> FastAPI:
    settings = get_settings()
    application = FastAPI(title=settings.app_name)
    application.include_router(api_router, prefix="/api")
    application.include_router(taskiq_tasks_router, prefix="/api")
    # a catch-all: anything included after this mount would never be reached
    application.mount("/", StaticFiles(directory="static", html=True, check_dir=False))
    return application


app = create_app()
