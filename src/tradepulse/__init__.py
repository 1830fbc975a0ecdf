"""TradePulse: a real-time market-data pipeline (sources → log → validate → process → store → serve)."""

__version__ = "0.1.0"
