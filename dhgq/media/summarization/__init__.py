"""Summarization: Claude, or an offline extractive summary on MiniLM sentence embeddings."""
