"""Reading the event payload format: what an Optimizely event POST carries.

Shared by the testing kit and the devserver, and by nothing on the request path:
:mod:`.payloads` reads a payload into impressions and conversions, and
:mod:`.validation` checks one against the event API's shape.
"""
