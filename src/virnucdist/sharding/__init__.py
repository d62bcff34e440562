"""Who computes what: contiguous, token-balanced runs per rank and the windows inside them."""

from .partition import partition, plan_windows, rank_costs

__all__ = ["partition", "plan_windows", "rank_costs"]
