"""Analytic stages between the log and the stores: features, bars, anomalies, news join."""
