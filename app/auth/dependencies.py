"""Route guards: ``Depends(require(Scope.WRITE))``.

401 names what is missing or wrong with the key; 403 what the key lacks.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from app.auth import service
from app.auth.service import Scope
from app.db.api_key import ApiKey
from app.errors import PermissionDenied, Unauthenticated
from app.web.deps import SessionDep, SettingsDep

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="edge-automl"'}


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthenticated(
                "malformed Authorization header: expected 'Bearer <api key>'", headers=_CHALLENGE
            )
        return credentials.strip()
    return request.headers.get("x-goog-api-key") or None


def require(scope: Scope) -> Callable[..., ApiKey | None]:
    def guard(request: Request, session: SessionDep, settings: SettingsDep) -> ApiKey | None:
        secret = _presented_key(request)
        if secret is None:
            if not service.auth_required(session, mode=settings.auth):
                return None
            raise Unauthenticated(
                "missing API key: send 'Authorization: Bearer <key>' or 'x-goog-api-key: <key>'",
                headers=_CHALLENGE,
            )
        key = service.authenticate(session, secret=secret)
        if key is None:
            raise Unauthenticated("API key is not valid or was revoked", headers=_CHALLENGE)
        if not service.grants(key.scopes, scope):
            raise PermissionDenied(
                f"API key {key.display_name!r} has scopes {key.scopes}; "
                f"this call needs {scope.value!r}"
            )
        return key

    guard.__name__ = f"require_{scope.value}"
    return guard
