"""embedfleet worker: a batched embedding engine behind an OpenAI-compatible HTTP API."""

__version__ = "0.1.0"
