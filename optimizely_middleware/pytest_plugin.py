"""pytest plugin for asserting on the Optimizely events a request sends."""
