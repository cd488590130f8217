"""WSGI entry point (gunicorn, uWSGI, ``runserver``): nothing Optimizely-specific here.

``OptimizelyMiddleware`` in ``settings.MIDDLEWARE`` does the work; the
package's exit handler delivers the last events when the worker exits.

    gunicorn mysite.wsgi:application
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_wsgi_application()
