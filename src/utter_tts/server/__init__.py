"""The OpenAI-compatible HTTP server, voice library routes and web page."""
