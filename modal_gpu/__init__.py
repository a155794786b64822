"""dhgq's Modal app (``modal_gpu/app.py``): transcription and diarization on a cloud GPU."""
