"""Tracker backends behind one contract (see ``base``), registered by name."""

from .base import Outcome, RunInfo, Tracker, Trackers, available, create, register

__all__ = ["Outcome", "RunInfo", "Tracker", "Trackers", "available", "create", "register"]
