"""ASGI entry point (uvicorn, hypercorn, daphne).

``asgi_application`` answers the lifespan protocol for Django and flushes the
Optimizely events when the server shuts down: under uvicorn nothing else
would (it runs no ``atexit`` handlers after SIGTERM).

    uvicorn mysite.asgi:application
"""

import os

from django.core.asgi import get_asgi_application

from optimizely_middleware.django import asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = asgi_application(get_asgi_application())
