"""Data: sources of real examples, transforms, and one grain pipeline per task variant."""

# Importing these registers the "arrayrecord", "idx", "paired" and "tfds" sources.
from imp.data import arrayrecord_source, idx_source, paired_source, tfds_source  # noqa: F401
from imp.data.eval_stream import EvalStream, eval_stream
from imp.data.pipeline import EvalBatches, TaskIterators, eval_batches, prompt_tokens
from imp.data.sources import SOURCES, DataSource, load_source, load_sources, register_source
from imp.data.tokenizer import ByteTokenizer
from imp.data.training import task_dataset

__all__ = [
    "SOURCES", "ByteTokenizer", "DataSource", "EvalBatches", "EvalStream", "TaskIterators",
    "eval_batches", "eval_stream", "load_source", "load_sources", "prompt_tokens",
    "register_source", "task_dataset",
]
