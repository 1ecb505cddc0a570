"""Customer and invoice IDs: 1 to 64 characters of ``[A-Za-z0-9_-]``, as the broker."""

from __future__ import annotations

import re
from typing import TypeGuard

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_valid_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _ID.fullmatch(value) is not None
