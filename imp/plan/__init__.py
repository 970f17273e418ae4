"""The plan of a run: a validated config -> tasks, StepSpecs, abstract batches, model,
optimizer, mesh and shardings (nothing read, nothing allocated); and its programs, lowered and
compiled before step 1 with their sizes (`imp.plan.programs`)."""

from imp.plan.plan import ConfigError, DatasetFacts, Plan, TrainProgram, abstract_batch, build_plan

__all__ = ["ConfigError", "DatasetFacts", "Plan", "TrainProgram", "abstract_batch", "build_plan"]
