"""Unit tests, one file per module: tests/unit/<folder>/test_<module>.py mirrors
optimizely_middleware/<folder>/<module>.py (the framework faces included)."""
