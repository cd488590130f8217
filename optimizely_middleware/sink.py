"""The import path ``optimizely_middleware.sink`` (named in the docs): the code is in
:mod:`optimizely_middleware.delivery.sink`.
"""

from optimizely_middleware.delivery.sink import EventSink

__all__ = ["EventSink"]
