"""Tests of the project around the package rather than of one module: the docs and
the README (their snippets and the tests they name), the package metadata, the
examples, the demo, the benchmarks and the import graph of the architecture."""
