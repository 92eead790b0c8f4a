"""Snapshots and serving: published model versions in shared memory, and the predict loop."""
