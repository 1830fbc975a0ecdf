"""The cluster backend's processes: the stages of `tradepulse run`, each its own process, on
Kafka, DynamoDB, SQS and S3.

  tradepulse producer   WebSocket (Polygon or the simulator) → validate → Kafka trades/quotes;
                        dead letters → SQS                                      (producer.py)
  tradepulse processor  Kafka → features, anomalies, news join → DynamoDB + output topics,
                        exactly once (log/transactional.py); S3 cold sink       (processor.py)
  tradepulse news       Finnhub (or the simulator's endpoint) → Kafka news       (news.py)
  tradepulse api        FastAPI over DynamoDB, health from the group's lag      (api.py)

Every process reads the same settings (`cluster_namespace` keeps pipelines sharing one stack
apart); processors share the partitions of one consumer group. `tradepulse run --backend
cluster` starts them together as child processes and stops them in order (supervise.py).
"""
