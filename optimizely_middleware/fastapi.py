"""FastAPI integration: one line adds the package; the client is a dependency.

Usage::

    from fastapi import FastAPI
    from optimizely_middleware.fastapi import OptimizelyClient, OptimizelyFastAPI

    app = FastAPI()
    OptimizelyFastAPI(app)     # settings from OPTIMIZELY_* variables or keywords

    @app.get("/")
    def home(optimizely: OptimizelyClient, user: str = "anon") -> dict[str, bool]:
        decision = optimizely.create_user_context(user).decide("new_checkout")
        return {"new_checkout": decision.enabled}
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from optimizely.optimizely import Optimizely

from optimizely_middleware.starlette import optimizely_client
from optimizely_middleware.starlette_extension import OptimizelyOptions, OptimizelyStarlette

__all__ = ["OptimizelyClient", "OptimizelyFastAPI", "OptimizelyOptions", "optimizely_client"]

#: The request's Optimizely client, as a path operation parameter type.
OptimizelyClient = Annotated[Optimizely, Depends(optimizely_client)]


class OptimizelyFastAPI(OptimizelyStarlette):
    """:class:`~optimizely_middleware.starlette.OptimizelyStarlette` for a FastAPI app.

    Settings come from the keywords, then the ``OPTIMIZELY_*`` environment
    variables; the middleware flushes at the lifespan shutdown, after the
    app's own ``lifespan``. Path operations take the client as a parameter
    of type :data:`OptimizelyClient`.

    Example::

        app = FastAPI(lifespan=lifespan)
        optimizely = OptimizelyFastAPI(app, failed_requests="discard")
    """
