"""Timing defaults that the command line shows in --help (no torch import needed here)."""

DEFAULT_BUDGET_S = 40.0  # seconds for all the timing of one command
