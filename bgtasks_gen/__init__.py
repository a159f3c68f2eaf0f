"""bgtasks: scaffold production-grade background tasks into an existing FastAPI project."""

__version__ = "0.1.0"
