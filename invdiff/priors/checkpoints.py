"""Safe, strict checkpoint reading: the priors' view of ``operators.checkpoints`` (which the
operators' blur-network checkpoints share; ``operators`` imports nothing from ``invdiff``, so the
code lives there). See that module for what is read, what is refused, and why.
"""

from __future__ import annotations

from operators.checkpoints import (EDM_PERSISTENCE, KIND_NAMES, NOT_A_CHECKPOINT, CheckpointError,  # noqa: F401
                                   checkpoint_kind, not_a_checkpoint, pickle_globals, plain_pickle_refusal,
                                   require_file, safe_safetensors_load, safe_torch_load, save_safetensors,
                                   sha256_file, strict_load, strip_prefix)

__all__ = ["CheckpointError", "require_file", "safe_safetensors_load", "safe_torch_load", "save_safetensors",
           "sha256_file", "strict_load", "strip_prefix", "checkpoint_kind", "pickle_globals", "not_a_checkpoint",
           "plain_pickle_refusal", "EDM_PERSISTENCE", "KIND_NAMES", "NOT_A_CHECKPOINT"]
