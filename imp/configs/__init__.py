"""Experiment configs that ship inside the package (the default experiment)."""
