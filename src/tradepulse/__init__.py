"""TradePulse: real-time market data (sources → log → validate → process → store → serve)."""

__version__ = "0.1.0"
