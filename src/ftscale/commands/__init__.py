"""Command-line sub-commands, one module per job; each exposes ``register(app)``."""
