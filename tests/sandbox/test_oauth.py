"""POST /oauth/token: client credentials in, an opaque bearer token out."""

from __future__ import annotations

import base64
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from broker.sandbox import SandboxSettings

Client = TestClient[web.Request, web.Application]
GRANT = {"grant_type": "client_credentials"}


def basic(raw: str) -> str:
    return "Basic " + base64.b64encode(raw.encode()).decode()


@pytest.fixture
def sandbox_settings() -> SandboxSettings:
    return SandboxSettings(oauth_ttl=1234, signing_secret=b"x" * 32)


async def test_good_credentials_get_an_opaque_hex_bearer_token(
    client: Client, oauth_headers: dict[str, str]
) -> None:
    response = await client.post("/oauth/token", data=GRANT, headers=oauth_headers)

    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert re.fullmatch(r"[0-9a-f]{56}", body["access_token"])
    assert body["expires_in"] == 1234
    assert body["token_type"] == "bearer"
    stats = await (await client.get("/_sandbox/stats")).json()
    assert stats["oauth_tokens_issued"] == 1


async def test_every_call_issues_a_fresh_token(
    client: Client, oauth_headers: dict[str, str]
) -> None:
    tokens = set()
    for _ in range(3):
        response = await client.post("/oauth/token", data=GRANT, headers=oauth_headers)
        tokens.add((await response.json())["access_token"])

    assert len(tokens) == 3


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        basic("sandbox-client:wrong-secret"),
        basic("other-client:sandbox-secret"),
        basic("sandbox-client"),  # no colon
        basic("sandbox-client:sandbox-secret ").replace("Basic", "Bearer"),
        "Basic !!!not-base64!!!",
        "Basic",
    ],
)
async def test_bad_or_missing_credentials_are_403_invalid_credentials(
    client: Client, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = await client.post("/oauth/token", data=GRANT, headers=headers)

    assert response.status == 403
    assert await response.json() == {"code": "forbidden", "message": "Invalid credentials"}


@pytest.mark.parametrize(
    "form",
    [
        [],
        [("grant_type", "password")],
        [("grant_type", "")],
        [("grant_type", "client_credentials"), ("grant_type", "password")],
    ],
)
async def test_grant_type_other_than_client_credentials_is_400(
    client: Client, oauth_headers: dict[str, str], form: list[tuple[str, str]]
) -> None:
    response = await client.post("/oauth/token", data=form, headers=oauth_headers)

    assert response.status == 400
    assert (await response.json())["code"] == "bad_request"


async def test_grant_type_must_arrive_as_a_form(
    client: Client, oauth_headers: dict[str, str]
) -> None:
    response = await client.post("/oauth/token", json=GRANT, headers=oauth_headers)

    assert response.status == 400
    assert (await response.json())["code"] == "bad_request"
