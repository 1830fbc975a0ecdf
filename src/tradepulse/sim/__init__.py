"""Market simulator: a Polygon-compatible stocks WebSocket and Polygon/Finnhub-compatible REST
over generated trades, quotes and news, with injected anomalies, malformed events and the
ground truth to score the pipeline against.

    sim = MarketSimulator(SimConfig(tickers=["AAPL"], rate=500, count=10_000, truth_dir=p))
    await sim.start()          # listening; sim.ws_url, sim.http_url
    await sim.wait_finished()  # count/duration reached and everything sent
    await sim.stop()           # flush and close clients, write truth, stop serving
"""

from tradepulse.sim.config import SimConfig
from tradepulse.sim.market import MALFORMED_KINDS, MarketGenerator
from tradepulse.sim.server import MarketSimulator

__all__ = ["MALFORMED_KINDS", "MarketGenerator", "MarketSimulator", "SimConfig"]
