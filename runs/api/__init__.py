"""The HTTP API (FastAPI): the Veryfront Runs API contract."""
