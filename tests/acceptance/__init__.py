"""acceptance tests."""
