"""The HTTP layer: the OpenAI-compatible API, its errors and limits, the server and its
connections; it reaches the engine through engine.client."""
