"""The model: its files, loading, and the runners that compute hidden states."""
