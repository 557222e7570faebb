"""Opaque resource ids: URL-safe, matching ``[A-Za-z0-9_-]{1,60}`` as the API promises."""

from __future__ import annotations

import re
import uuid

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,60}$")


def new_id() -> str:
    """A random id; hex keeps ids easy to read aloud and safe in every URL position."""
    return uuid.uuid4().hex


def is_valid_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value))
