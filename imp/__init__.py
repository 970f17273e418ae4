"""imp: integrated multimodal, multi-task Transformers trained with Alternating Gradient Descent.

Read `imp/train/loop.py` first: it is the AGD loop, top to bottom; `imp/plan/plan.py` is what
it is built from.
"""

__version__ = "0.1.0"
