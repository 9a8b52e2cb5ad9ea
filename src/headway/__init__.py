"""Headway: upgrade fleets of servers with no downtime, verification and rollback."""

__version__ = "0.1.0"
