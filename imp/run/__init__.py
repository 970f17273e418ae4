"""What training, evaluation and analysis share: a run opened from its config (plan, sources,
state, checkpointer, step cache), its restore, and its inference programs. Below
`imp.train.loop`, `imp.evaluate` and `imp.analysis`; imports none of them."""
