"""virnucdist: distributed packed-sequence embedding and VirNucPro viral read identification."""

__version__ = "0.1.0"
