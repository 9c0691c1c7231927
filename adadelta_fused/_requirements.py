"""The oldest torch and triton adadelta_fused is tested with (issue 19: torch 2.11.0 with triton 3.6.0, the
software of the GPU machines this project may borrow). Older ones lack APIs it uses; say so plainly."""

from __future__ import annotations

import re

TORCH_FLOOR = (2, 11)
TRITON_FLOOR = (3, 6)


def _major_minor(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def too_old(package: str, version: str, floor: tuple[int, int]) -> str | None:
    """Why ``version`` of ``package`` is below ``floor``, or None."""
    if _major_minor(version) >= floor:
        return None
    wanted = f"{package}>={floor[0]}.{floor[1]}"
    return f"adadelta_fused needs {wanted}, the oldest it is tested with; found {package} {version}"


def check_torch(version: str) -> None:
    reason = too_old("torch", version, TORCH_FLOOR)
    if reason:
        raise ImportError(reason)
