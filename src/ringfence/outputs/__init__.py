"""Sinks for events and findings."""

from ringfence.outputs._jsonl import JsonlSink, JsonlStatistics, RotatingFile

__all__ = ["JsonlSink", "JsonlStatistics", "RotatingFile"]
