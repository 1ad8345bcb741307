"""A dense linear operator on vectors, for small exact problems (Gaussian-mixture benchmarks,
toy posteriors): ``y = A x`` with ``x`` of shape ``[B, d]`` and ``y`` of shape ``[B, m]``."""

from __future__ import annotations

import torch
from torch import Tensor

from ._engines import DenseEngine
from .base import LinearOperator


class MatrixOperator(LinearOperator):
    """``y = A x`` for a real ``[m, d]`` matrix; exact SVD by ``torch.linalg.svd`` (full V, so the
    coefficient space is all of R^d and ``singular_values`` has d entries, zeros past rank m).

    Example::

        >>> import torch, operators
        >>> op = operators.MatrixOperator(torch.eye(2, 3))
        >>> op.A(torch.ones(4, 3)).shape
        torch.Size([4, 2])
    """

    def __init__(self, matrix: Tensor, **solver_options):
        matrix = torch.as_tensor(matrix, dtype=torch.float64)
        if matrix.ndim != 2 or matrix.numel() == 0:
            raise ValueError(f"MatrixOperator: matrix must be a non-empty 2-D array, got shape {tuple(matrix.shape)}")
        if not bool(torch.isfinite(matrix).all()):
            raise ValueError("MatrixOperator: matrix contains NaN or Inf")
        m, d = matrix.shape
        super().__init__(DenseEngine(matrix), (d,), (m,), **solver_options)
        self._solver_options = solver_options

    @property
    def matrix(self) -> Tensor:
        return self.engine.matrix

    def _describe_params(self) -> str:
        return f"{self.meas_size[0]}×{self.img_size[0]}"

    def config(self) -> dict:
        return dict(matrix=self.matrix, **self._solver_options)
