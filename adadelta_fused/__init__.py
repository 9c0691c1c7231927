"""adadelta_fused: torch.optim.Adadelta's exact update in one memory pass (CPU, CUDA, Triton)."""

import torch

from ._requirements import check_torch

check_torch(torch.__version__)

from . import ops  # noqa: F401  (declares torch.ops.adadelta_fused.adadelta_ and loads its kernels)
from . import quantized_ops  # noqa: F401  (declares torch.ops.adadelta_fused.quantized_adadelta_)
from . import sparse_ops  # noqa: F401  (declares torch.ops.adadelta_fused.sparse_adadelta_)
from .backends import BackendUnavailableError, available_backends
from .contract import GradMode
from .functional import adadelta_
from .optimizer import Adadelta, FusedAdadelta

__all__ = [
    "Adadelta",
    "FusedAdadelta",
    "adadelta_",
    "available_backends",
    "BackendUnavailableError",
    "GradMode",
]
__version__ = "0.1.0"
