"""Artifact formats. Each module offers the same pair: ``export(...)`` and ``load(...)``."""
