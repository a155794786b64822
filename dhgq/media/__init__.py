"""Pure stage functions: they work on files and dataclasses and know nothing of queues or databases."""
