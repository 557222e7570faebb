"""API keys: hashed storage, scopes, 401 versus 403, both header forms, revocation."""

from __future__ import annotations

import pytest

from app.auth import repository, service
from app.db.api_key import ApiKey
from app.errors import InvalidInput
from app.jobs import service as jobs_service


def make_key(session_factory, *scopes: str, name: str = "ci") -> tuple[ApiKey, str]:
    with session_factory.begin() as session:
        return service.create(session, display_name=name, scopes=list(scopes))


def an_operation(session_factory) -> str:
    with session_factory.begin() as session:
        return jobs_service.enqueue(session, kind="noop").id


def test_key_is_stored_hashed_and_shown_once(session_factory):
    key, secret = make_key(session_factory, "read")
    assert secret.startswith("eak_") and len(secret) > 40
    with session_factory() as session:
        stored = repository.get(session, key.id)
        assert stored is not None
        assert secret not in (stored.key_hash, stored.key_prefix)
        assert stored.key_hash == service.hash_key(secret)
        assert secret.startswith(stored.key_prefix)


def test_unknown_scope_is_refused(session_factory):
    with session_factory() as session, pytest.raises(InvalidInput, match="scope"):
        service.create(session, display_name="x", scopes=["superuser"])


def test_scopes_nest():
    assert service.grants(["admin"], service.Scope.WRITE)
    assert service.grants(["write"], service.Scope.READ)
    assert not service.grants(["read"], service.Scope.WRITE)
    assert not service.grants([], service.Scope.READ)


def test_without_keys_loopback_is_open(client, session_factory):
    op = an_operation(session_factory)
    assert client.get(f"/v1/operations/{op}").status_code == 200


def test_once_a_key_exists_a_call_without_one_is_401(client, session_factory):
    make_key(session_factory, "admin")
    op = an_operation(session_factory)
    response = client.get(f"/v1/operations/{op}")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert error["status"] == "UNAUTHENTICATED"
    assert "x-goog-api-key" in error["message"]


@pytest.mark.parametrize("header", ["authorization", "x-goog-api-key"])
def test_both_header_forms_authenticate(client, session_factory, header):
    _, secret = make_key(session_factory, "read")
    op = an_operation(session_factory)
    value = f"Bearer {secret}" if header == "authorization" else secret
    assert client.get(f"/v1/operations/{op}", headers={header: value}).status_code == 200


def test_wrong_or_malformed_key_is_401(client, session_factory):
    make_key(session_factory, "read")
    op = an_operation(session_factory)
    wrong = client.get(f"/v1/operations/{op}", headers={"x-goog-api-key": "eak_nope"})
    assert wrong.status_code == 401
    assert "not valid" in wrong.json()["error"]["message"]
    malformed = client.get(f"/v1/operations/{op}", headers={"authorization": "Basic abc"})
    assert malformed.status_code == 401
    assert "Bearer" in malformed.json()["error"]["message"]


def test_read_key_cannot_write_403(client, session_factory):
    _, reader = make_key(session_factory, "read", name="dashboard")
    _, writer = make_key(session_factory, "write")
    op = an_operation(session_factory)
    headers = {"authorization": f"Bearer {reader}"}
    assert client.get(f"/v1/operations/{op}", headers=headers).status_code == 200
    denied = client.post(f"/v1/operations/{op}:cancel", headers=headers)
    assert denied.status_code == 403
    error = denied.json()["error"]
    assert error["status"] == "PERMISSION_DENIED"
    assert "dashboard" in error["message"] and "'write'" in error["message"]
    allowed = client.post(f"/v1/operations/{op}:cancel", headers={"x-goog-api-key": writer})
    assert allowed.status_code == 200


def test_revoked_key_is_401_and_auto_mode_stays_locked(client, session_factory):
    key, secret = make_key(session_factory, "admin")
    _, other = make_key(session_factory, "read")
    with session_factory.begin() as session:
        service.revoke(session, key_id=key.id)
    op = an_operation(session_factory)
    assert client.get(f"/v1/operations/{op}", headers={"x-goog-api-key": secret}).status_code == 401
    assert client.get(f"/v1/operations/{op}").status_code == 401
    assert client.get(f"/v1/operations/{op}", headers={"x-goog-api-key": other}).status_code == 200


def test_auth_on_requires_a_key_even_with_none_created(app, client, session_factory):
    app.state.settings = app.state.settings.model_copy(update={"auth": "on"})
    op = an_operation(session_factory)
    assert client.get(f"/v1/operations/{op}").status_code == 401


def test_health_probes_need_no_key(client, session_factory):
    make_key(session_factory, "admin")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_last_used_is_recorded(client, session_factory):
    key, secret = make_key(session_factory, "read")
    client.get("/v1/operations", headers={"x-goog-api-key": secret})
    with session_factory() as session:
        stored = repository.get(session, key.id)
        assert stored is not None and stored.last_used_at is not None
