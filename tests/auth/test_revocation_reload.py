"""A revocation (memory backend) outlives every session it refused, across reloads."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from broker.gateway import Gateway
from broker.web.keys import gateway_key
from tests.conftest import MakeBroker, new_session
from tests.helpers import Sandbox, auth, make_settings


async def test_a_revoked_session_stays_revoked_after_a_reload_lengthened_the_ttl(
    make_broker: MakeBroker, sandbox: Sandbox
) -> None:
    settings = make_settings(sandbox.url, session_ttl=1)
    settings = replace(settings, sessions=replace(settings.sessions, leeway=0))
    client = await make_broker(settings)
    gateway: Gateway = client.app[gateway_key]
    await gateway.reload(replace(settings, sessions=replace(settings.sessions, ttl=600)))
    token = await new_session(client)  # lives 600 s
    assert (await client.get("/checkout/invoice", headers=auth(token))).status == 200
    await asyncio.sleep(0.01)
    await gateway.revoke_customer("cus_alice", time.time())
    assert (await client.get("/checkout/invoice", headers=auth(token))).status == 401
    await asyncio.sleep(1.2)  # past the start-up ttl (1 s) + leeway (0); 598 s to go
    response = await client.get("/checkout/invoice", headers=auth(token))
    assert response.status == 401, "the revoked session is served again"
