"""dhgq: a Postgres-native media pipeline for recorded talks."""
