"""The IMP model: modality embedders -> one shared encoder -> heads.

Shape glossary used in docstrings:
  B batch, N tokens, D model width, E common embedding width, C classes,
  F frames, H height, W width, T spectrogram time bins, Q spectrogram frequency bins.
"""

from imp.model.encoder import Encoder, MoeConfig, drop_tokens
from imp.model.imp_model import IMPModel, ModelConfig, Request
from imp.model.layer_stack import REMAT_AUTO, REMAT_POLICIES

__all__ = ["REMAT_AUTO", "REMAT_POLICIES", "Encoder", "IMPModel", "ModelConfig", "MoeConfig",
           "Request", "drop_tokens"]
