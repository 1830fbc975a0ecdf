"""Where events come from: the Polygon WebSocket and REST APIs, Finnhub news, flat files."""
