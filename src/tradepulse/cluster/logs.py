"""Log lines of a cluster process: TradePulse's own at `TRADEPULSE_LOG_LEVEL`, prefixed with the
process's tag like its status lines; the libraries' only from WARNING up (botocore and friends
narrate every request at INFO)."""

from __future__ import annotations

import logging
import sys

from tradepulse.config import Settings


def setup_logging(settings: Settings, tag: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{tag} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("tradepulse").setLevel(settings.log_level)
