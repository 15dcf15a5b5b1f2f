"""Benchmarks on real data. Each writes ``<out>/<name>.json`` and ``<out>/<name>.md``."""
