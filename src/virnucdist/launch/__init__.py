"""Process-group setup from the torchrun environment, rank helpers, stat gathering."""

from .dist import DistContext, init_distributed

__all__ = ["DistContext", "init_distributed"]
