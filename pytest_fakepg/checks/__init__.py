"""Checks over what the ranks of a world issued: pure functions over traces
(plain data decoded by records.py), with no pytest and no torch state. The
pytest side carries traces to them (plugin/sweeps.py); exact worlds use them
to word a deadlock."""
