"""Cold stores: the full history as Snappy Parquet in a Hive layout (local files, S3)."""
