"""The import path ``optimizely_middleware.transport`` (named in the docs): the code is in
:mod:`optimizely_middleware.delivery.transport`.
"""

from optimizely_middleware.delivery.transport import (
    PooledTransport,
    RequestsTransport,
    Transport,
    TransportResponse,
)

__all__ = ["PooledTransport", "RequestsTransport", "Transport", "TransportResponse"]
