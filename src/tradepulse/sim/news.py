"""News article wording for the simulator.

Headlines and summaries come in five tones so VADER's compound score spreads over the
correlator's strength classes: strong (|s| ≥ 0.5), mild (0.2 ≤ |s| < 0.5) and neutral (< 0.2).
The numbers in the comments were measured with vaderSentiment 3.3 on headline + summary.
"""

from __future__ import annotations

TONES: tuple[str, ...] = (
    "strong_positive",
    "positive",
    "neutral",
    "negative",
    "strong_negative",
)
TONE_WEIGHTS: tuple[float, ...] = (0.25, 0.15, 0.2, 0.15, 0.25)

HEADLINES: dict[str, tuple[str, ...]] = {
    "strong_positive": (
        "{company} shares surge after record quarterly profit beats expectations",
        "{company} wins major contract, analysts upgrade to strong buy",
        "{company} soars as excellent demand drives outstanding growth",
        "{company} raises guidance after a great quarter, investors cheer",
    ),
    "positive": (
        "{company} edges higher after a solid product update",
        "{company} expands partnership with a regional distributor",
        "{company} gains on steady demand for its services",
    ),
    "neutral": (
        "{company} to hold annual shareholder meeting in June",
        "{company} announces date of quarterly earnings call",
        "{company} files quarterly report with the SEC",
        "{company} names new chief financial officer",
    ),
    "negative": (
        "{company} slips as higher costs weigh on margins",
        "{company} faces questions over slowing sales",
        "{company} misses revenue estimates slightly",
    ),
    "strong_negative": (
        "{company} plunges after disappointing results and weak guidance",
        "{company} hit with fraud lawsuit, shares tumble",
        "{company} warns of heavy losses amid layoffs and falling demand",
        "{company} crashes as regulators launch investigation into accounting scandal",
    ),
}

SUMMARIES: dict[str, tuple[str, ...]] = {
    "strong_positive": (
        "Analysts praised the strong results and raised their price targets.",
        "The company reported impressive growth and a record backlog.",
    ),
    "positive": (
        "The update was received well by customers.",
        "Management said demand remained healthy.",
    ),
    "neutral": (
        "Details are available on the company's investor relations website.",
        "The filing was made on {ticker}'s regular schedule.",
    ),
    "negative": (
        "Management said the delay could affect near-term revenue.",
        "The company expects conditions to stay uncertain.",
    ),
    "strong_negative": (
        "Investors fear further losses as the crisis deepens.",
        "Analysts slashed targets, citing serious risks and weak demand.",
    ),
}

SOURCES: tuple[str, ...] = (
    "Reuters",
    "MarketWatch",
    "Yahoo",
    "Benzinga",
    "SeekingAlpha",
    "CNBC",
    "Bloomberg",
)

COMPANIES: dict[str, str] = {
    "AAPL": "Apple",
    "MSFT": "Microsoft",
    "NVDA": "Nvidia",
    "AMZN": "Amazon",
    "GOOGL": "Alphabet",
    "GOOG": "Alphabet",
    "META": "Meta Platforms",
    "TSLA": "Tesla",
    "AMD": "AMD",
    "NFLX": "Netflix",
    "JPM": "JPMorgan Chase",
    "BAC": "Bank of America",
    "XOM": "Exxon Mobil",
    "INTC": "Intel",
    "SPY": "SPDR S&P 500 ETF",
    "QQQ": "Invesco QQQ",
    "IBM": "IBM",
    "KO": "Coca-Cola",
    "WMT": "Walmart",
    "DIS": "Disney",
}


def company_name(ticker: str) -> str:
    return COMPANIES.get(ticker, f"{ticker} Corp")
