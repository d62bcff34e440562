"""Packed models and their loaders."""
