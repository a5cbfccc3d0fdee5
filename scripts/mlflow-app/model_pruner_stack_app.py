"""MLflow 3.x's own FastAPI app, for the local stack's tracking servers (`mlflow server
--app-name model-pruner-stack`), with the modules MLflow imports lazily imported first.

Why: MLflow 3.17 imports `mlflow.server.auth` (and with it the auth tables' SQLAlchemy models)
on a server worker's first `runs/search`, and `mlflow.store.model_registry.sqlalchemy_store`,
which runs SQLAlchemy's `configure_mappers()` over every model, on its first registry request.
When those two first requests arrive at once on different threads, `configure_mappers()` can
meet the auth models half-defined ("'SqlUserRoleAssignment' failed to locate a name") and the
worker fails every registry request from then on. Importing both here, before the worker takes
traffic, removes the race. Nothing else changes: the app is `mlflow.server.fastapi_app:app`.
"""

try:
    import mlflow.server.auth  # noqa: F401  (as search_runs_impl does, ImportError allowed)
except ImportError:
    pass
import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401,E402
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401,E402
from mlflow.server.fastapi_app import app  # noqa: E402

__all__ = ["app"]
