"""LLM serving: an iteration-level (continuous batching) engine and OpenAI-compatible APIs."""
