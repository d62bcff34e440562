"""Tasks plugged into the engine's rank loop: embed (ESM-2 / DNABERT-S) and predict (VirNucPro).

The contract a task fulfils (``Task``, ``Block``, ``RunPlan``, ``Counters``) is the engine's:
:mod:`virnucdist.engine.task`. The engine never imports a task."""
