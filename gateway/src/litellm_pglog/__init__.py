"""LiteLLM gateway add-on: static API keys and request/response logging to PostgreSQL."""
