"""Tasks: what one AGD step trains on, and how often.

A `Task` is one (dataset, objective, variant) triple with a fixed input signature; the
`TaskRegistry` builds and validates them from config and computes sampling weights; the
`TaskSampler` picks the task of every step as a pure function of (seed, step, weights).
"""

from imp.tasks.registry import MODALITIES, WEIGHTINGS, Task, TaskRegistry, Variant
from imp.tasks.sampler import TaskSampler

__all__ = ["MODALITIES", "WEIGHTINGS", "Task", "TaskRegistry", "TaskSampler", "Variant"]
