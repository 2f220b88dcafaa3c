"""Real ranks: a fake-world test run on gloo or NCCL processes, its ledger
compared with the fake world's (NOTE [Real ranks], real/world.py). Nothing
here is imported until a run asks for real ranks."""

# Where a rank started by the launcher writes its result (launch.py), read
# by the rank's plugin (plugin/real.py).
OUT_ENV = "PYTEST_FAKEPG_REAL_OUT"
