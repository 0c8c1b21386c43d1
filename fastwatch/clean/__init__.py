"""Cleaning a run's data as its owner decided (`fastwatch cleanup`): reads the store only, never imports torch."""
