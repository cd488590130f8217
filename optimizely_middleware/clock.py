"""The import path ``optimizely_middleware.clock`` (named in the docs): the code is in
:mod:`optimizely_middleware.delivery.clock`.
"""

from optimizely_middleware.delivery.clock import Clock, ManualClock, Wait, wait_on

__all__ = ["Clock", "ManualClock", "Wait", "wait_on"]
