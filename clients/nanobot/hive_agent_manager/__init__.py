"""Declare nanobot sub-agents through Hive's HTTP API; no Docker anywhere."""

from .client import HiveClient, HiveError

__all__ = ["HiveClient", "HiveError"]
