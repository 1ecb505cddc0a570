"""Customer and invoice IDs: 1 to 64 characters of ``[A-Za-z0-9_-]``, the broker's rule too."""

from __future__ import annotations

import re
from typing import TypeGuard

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
ID_RULE = "must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -"


def is_valid_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None
