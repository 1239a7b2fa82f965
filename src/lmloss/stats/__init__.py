"""The tile engine: the only code in lmloss that iterates over the vocabulary.

Single-model statistics (:func:`token_stats`) and two-model pair terms
(:mod:`lmloss.stats.divergence`) are two kernels run by one scheduler
(:mod:`lmloss.stats.schedule`) on logit tiles from :mod:`lmloss.stats.tiles`;
``docs/engine.md`` describes it.
"""

from lmloss.stats.api import TokenStats, token_stats, token_stats_from_logits
from lmloss.stats.statistics import STATISTICS
from lmloss.stats.transform import LogitTransform

__all__ = ["STATISTICS", "LogitTransform", "TokenStats", "token_stats", "token_stats_from_logits"]
