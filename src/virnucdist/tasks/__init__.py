"""Tasks plugged into the engine's rank loop: embed (ESM-2 / DNABERT-S) and predict (VirNucPro)."""

from .base import Block, Counters, RunPlan, Task

__all__ = ["Block", "Counters", "RunPlan", "Task"]
