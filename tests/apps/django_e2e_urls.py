"""The served test project's URLs: the example project's, then the test views."""

from __future__ import annotations

from mysite.urls import urlpatterns as example_urlpatterns

from tests.apps.django_views import urlpatterns as test_urlpatterns

urlpatterns = [*example_urlpatterns, *test_urlpatterns]
