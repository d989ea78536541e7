"""Collector sources, one module each, all behind ``sources.base.Source``."""
