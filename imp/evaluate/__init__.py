"""Evaluation: zero-shot classification (`zero_shot`), linear probes (`linear_probe`), and the
experiment's eval suite (`suite.EvalSuite`)."""

from imp.evaluate.suite import EvalSuite

__all__ = ["EvalSuite"]
