"""Extraction: a media file to 16 kHz mono WAV, a compact copy, probe metadata and loudness metrics (ffmpeg)."""
