"""From a server's protocol to the request scope: WSGI, ASGI, and the server's process.

:mod:`.wsgi` and :mod:`.asgi` are the middleware every framework face builds on;
:mod:`.adapters` holds what every adapter does alike, whatever its protocol;
:mod:`.asgi_common` the ASGI types and the one observed call in a scope;
:mod:`.lifespan` is the ASGI lifespan's flush; :mod:`.sigterm` covers servers
that die by their stop signal (uWSGI's own exit and fork are the base layer's:
:mod:`optimizely_middleware.process.uwsgi`).
"""
