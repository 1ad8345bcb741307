"""Safe, strict checkpoint reading (shared with the operators' checkpoints: ``operators._checkpoints``)."""

from operators._checkpoints import (CheckpointError, require_file, safe_safetensors_load, safe_torch_load,
                                    save_safetensors, sha256_file, strict_load, strip_prefix)

__all__ = ["CheckpointError", "require_file", "safe_safetensors_load", "safe_torch_load", "save_safetensors",
           "sha256_file", "strict_load", "strip_prefix"]
