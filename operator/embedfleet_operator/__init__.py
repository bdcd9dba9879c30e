"""embedfleet operator: reconciles EmbeddingService resources into GPU worker fleets."""

__version__ = "0.1.0"
