"""Server tests: real uvicorn servers on 127.0.0.1, driven by httpx, the openai SDK, websockets, Chromium."""
