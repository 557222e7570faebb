"""Route guards: ``Depends(require(Scope.WRITE))``.

401 names what is missing or wrong with the key; 403 what the key lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Security
from fastapi.security import APIKeyHeader

from app.auth import service
from app.auth.service import Scope
from app.db.api_key import ApiKey
from app.errors import PermissionDenied, Unauthenticated
from app.web.deps import SessionDep, SettingsDep

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="edge-automl"'}


# Declared as security schemes so the OpenAPI document (and generated clients) show both
# ways to send a key; auto_error is off because the guard below words the errors itself.
bearer_scheme = APIKeyHeader(
    name="Authorization",
    scheme_name="bearer",
    description="'Bearer <api key>'",
    auto_error=False,
)
google_api_key_scheme = APIKeyHeader(
    name="x-goog-api-key", scheme_name="googleApiKey", auto_error=False
)


def _presented_key(authorization: str | None, google_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthenticated(
                "malformed Authorization header: expected 'Bearer <api key>'", headers=_CHALLENGE
            )
        return credentials.strip()
    return google_api_key or None


def require(scope: Scope) -> Callable[..., ApiKey | None]:
    def guard(
        session: SessionDep,
        settings: SettingsDep,
        authorization: Annotated[str | None, Security(bearer_scheme)],
        google_api_key: Annotated[str | None, Security(google_api_key_scheme)],
    ) -> ApiKey | None:
        secret = _presented_key(authorization, google_api_key)
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
