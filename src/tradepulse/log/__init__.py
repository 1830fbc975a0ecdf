"""The log between ingest and processing: in-process bounded queue (embedded) or Kafka (cluster)."""
