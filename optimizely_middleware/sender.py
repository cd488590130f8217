"""The import path ``optimizely_middleware.sender`` (named in the docs): the code is in
:mod:`optimizely_middleware.delivery.sender`.
"""

from optimizely_middleware.delivery.sender import (
    ErrorCallback,
    EventSender,
    SenderOptions,
    iter_senders,
    on_new_sender,
)

__all__ = ["ErrorCallback", "EventSender", "SenderOptions", "iter_senders", "on_new_sender"]
