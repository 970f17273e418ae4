"""Performance measurements that print ratios taken side by side in one run and write JSON.

They never assert on wall time; tests only check that they run in their quick mode.
"""
