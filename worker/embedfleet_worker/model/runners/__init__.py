"""Model runners: turn batches of token-id sequences into pooled fp32 vectors."""
