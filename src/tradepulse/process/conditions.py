"""Trade condition codes that keep a print out of VWAP, volume, bars and features.

Codes are Polygon's unified trade-condition ids (the `c` field of the stocks feed; see
Polygon's `/v3/reference/conditions`, which maps them to the CTA and UTP SIP codes). The
consolidated-tape update rules say, per condition, whether a print updates the last sale
price, the high/low and the volume. A print that the tape does not treat as a regular last
sale would bend a VWAP or a momentum with a price that is not the market's (an average-price
or next-day settlement print, an official open/close re-stated by one venue, a contingent
leg priced off another instrument), so one set is used for every feature: a trade carrying
any code below is excluded from VWAP, volume, bars and the feature rows. It is still stored
as a trade, so the tape itself stays complete.

| code | condition                                   | why it is excluded                        |
| ---- | ------------------------------------------- | ----------------------------------------- |
| 2    | Average Price Trade                         | price is an average, not a last sale      |
| 7    | Cash Sale                                   | non-standard settlement, no last sale     |
| 10   | Derivatively Priced                         | priced off another instrument             |
| 13   | Extended Hours (Sold Out of Sequence)       | out-of-sequence report, no last sale      |
| 15   | Market Center Official Close                | restates a venue's close; no volume       |
| 16   | Market Center Official Open                 | restates a venue's open; no volume        |
| 20   | Next Day                                    | non-standard settlement, no last sale     |
| 21   | Price Variation Trade                       | price outside the normal band             |
| 29   | Seller                                      | seller's-option settlement, no last sale  |
| 37   | Odd Lot Trade                               | does not update the last sale price       |
| 38   | Corrected Consolidated Close                | a correction of an earlier print; no vol. |
| 52   | Contingent Trade                            | priced with a contingent leg              |
| 53   | Qualified Contingent Trade                  | priced with a contingent leg              |

docs/schema.md repeats this table; change both together.
"""

from __future__ import annotations

from collections.abc import Iterable

EXCLUDED_CONDITIONS: frozenset[int] = frozenset({2, 7, 10, 13, 15, 16, 20, 21, 29, 37, 38, 52, 53})


def is_excluded(conditions: Iterable[int]) -> bool:
    """True when any condition code keeps the trade out of VWAP, volume, bars and features."""
    return not EXCLUDED_CONDITIONS.isdisjoint(conditions)
