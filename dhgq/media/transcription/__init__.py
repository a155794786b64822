"""Transcription: Whisper engines (faster-whisper, openai-whisper), their models, features and chunking."""
