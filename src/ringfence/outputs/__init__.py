"""Sinks for events and findings."""

from ringfence.events import JsonlStatistics
from ringfence.outputs._jsonl import JsonlSink, RotatingFile

__all__ = ["JsonlSink", "JsonlStatistics", "RotatingFile"]
