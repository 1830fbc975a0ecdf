"""Stores: a hot copy for fast reads (SQLite / DynamoDB) and a cold Parquet copy for history."""
