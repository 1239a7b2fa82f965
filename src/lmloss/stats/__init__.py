"""The statistics engine: the only code that touches the vocabulary dimension."""

from lmloss.stats.api import TokenStats, token_stats, token_stats_from_logits
from lmloss.stats.statistics import STATISTICS
from lmloss.stats.transform import LogitTransform

__all__ = ["STATISTICS", "LogitTransform", "TokenStats", "token_stats", "token_stats_from_logits"]
