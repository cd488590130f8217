"""End-to-end tests, one file per server (tests/e2e/test_<server>.py): real servers
started by tests/support/servers.py, the real SDK, a real event endpoint."""
