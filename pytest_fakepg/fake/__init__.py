"""Worlds on fake tensors (``tensors="fake"``): no storage, no compute, any
model size; collectives recorded as with real tensors (collectives.py), a
DeviceMesh kept real (mode.py), and each rank's memory measured (memory.py)."""
