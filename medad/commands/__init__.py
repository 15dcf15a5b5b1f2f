"""CLI command modules; each defines ``register(app, bench_app)``."""
