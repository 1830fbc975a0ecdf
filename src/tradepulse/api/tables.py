"""Names of the derived tables the API reads, taken from the stages that declare them."""

from __future__ import annotations

from tradepulse.process.correlator import SENTIMENT_TABLE

FEATURES = "features_latest"
ANOMALIES = "anomalies"
SENTIMENT = SENTIMENT_TABLE.name
