"""The package version, in a leaf module every part of the library may import."""

__version__ = "0.1.0"
