"""The pure-torch reference as a backend: runs anywhere torch runs, and is the last resort."""

from __future__ import annotations

import torch

from ..reference import adadelta_step_reference_ as step_
from ..contract import check_group

NAME = "reference"
__all__ = ["NAME", "unavailable_reason", "unsupported_reason", "step_", "check_group"]


def unavailable_reason() -> str | None:
    return None


def unsupported_reason(device: torch.device) -> str | None:
    return None
