"""Diarization: who spoke when; dhgq's overlap-aware CPU diarizer and its parts, and the pyannote engine."""
