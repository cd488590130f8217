from __future__ import annotations

from django.urls import path

from mysite import views

urlpatterns = [
    path("", views.index),
    path("buy", views.buy),
    path("async", views.async_index),
]
