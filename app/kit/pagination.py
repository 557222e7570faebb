"""Keyset paging behind Google's ``pageSize`` / ``pageToken`` / ``nextPageToken``.

A token encodes the sort key of the last item served, so pages stay stable while rows are
added, and it is bound to the list's filter so it cannot be replayed against another query.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_

from app.errors import InvalidInput

MAX_PAGE_SIZE = 100
T = TypeVar("T")


@dataclass(frozen=True)
class PageCursor:
    """The position after which the next page starts: newest first by (time, id)."""

    time: datetime
    id: str


def _filter_digest(filter_key: str) -> str:
    return hashlib.sha256(filter_key.encode()).hexdigest()[:12]


def _encode(position: dict[str, Any], filter_key: str) -> str:
    raw = json.dumps({**position, "f": _filter_digest(filter_key)})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(token: str, filter_key: str, read: Callable[[dict[str, Any]], T]) -> T:
    """``read(fields)`` of the token's fields, once the token is known to be this list's."""
    try:
        raw: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position, digest = read(raw), raw["f"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput.field("pageToken", "is not a token that this list returned") from exc
    if digest != _filter_digest(filter_key):
        raise InvalidInput.field("pageToken", "was issued for a different filter")
    return position


def encode_token(cursor: PageCursor, *, filter_key: str = "") -> str:
    return _encode({"t": cursor.time.isoformat(), "i": cursor.id}, filter_key)


def decode_token(token: str | None, *, filter_key: str = "") -> PageCursor | None:
    if not token:
        return None
    return _decode(
        token,
        filter_key,
        lambda raw: PageCursor(time=datetime.fromisoformat(raw["t"]), id=str(raw["i"])),
    )


def newest_first(
    query: Select[Any], *, time: Any, id: Any, after: PageCursor | None, limit: int
) -> Select[Any]:
    """Order a query newest first by (time, id) and start it after ``after``'s position."""
    query = query.order_by(time.desc(), id.desc()).limit(limit)
    if after is None:
        return query
    return query.where(or_(time < after.time, and_(time == after.time, id < after.id)))


def check_page_size(page_size: int | None, *, default: int) -> int:
    if page_size is None:
        return default
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidInput.field("pageSize", f"must be between 1 and {MAX_PAGE_SIZE}")
    return page_size


def encode_offset_token(offset: int, *, filter_key: str = "") -> str:
    """A token for lists computed afresh on each call in a fixed order (no stored rows)."""
    return _encode({"o": offset}, filter_key)


def decode_offset_token(token: str | None, *, filter_key: str = "") -> int:
    if not token:
        return 0
    offset = _decode(token, filter_key, lambda raw: int(raw["o"]))
    if offset < 0:
        raise InvalidInput.field("pageToken", "is not a token that this list returned")
    return offset
