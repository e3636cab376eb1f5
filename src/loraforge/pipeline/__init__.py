"""Runs that compose the stages: prepare -> train -> gate -> ship, and the demo."""
