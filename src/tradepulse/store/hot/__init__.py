"""Hot stores: the latest 48 h for fast reads (SQLite embedded, DynamoDB at scale)."""
