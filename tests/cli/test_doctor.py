"""`token-broker doctor --config FILE` as an operator runs it, against the sandbox, a real
redis-server and small servers of our own, passing and failing: the command's main() in
this process (a process per check cost a second a test), and once as a real process on an
ASCII terminal (test_the_marks_survive_an_ascii_terminal)."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import ipaddress
import json
import os
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pytest_aiohttp import AiohttpServer
from redis.asyncio import Redis

from broker.sandbox import SandboxSettings, create_sandbox_app
from tests.cli.commands import BROKER, run_main, write_config
from tests.conftest import BrokerClient, MakeSandbox
from tests.helpers import Sandbox, self_signed_certificate, signing_key
from tests.redis.processes import RedisServer, free_port

SECRET = "canary-cli-secret"  # write_config's client secret
ALICE = ("--customer", "cus_alice", "--invoice", "inv_alice_1")


class Report:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def line(self, check: str) -> str:
        """The line of *check* ("partner token"), its mark first."""
        found = [line for line in self.stdout.splitlines() if line[2:].startswith(check + ":")]
        assert len(found) == 1, self.stdout
        return found[0]

    def mark(self, check: str) -> str:
        return self.line(check)[0]


async def doctor(config: Path, *args: str, env: dict[str, str] | None = None) -> Report:
    """Run the command (in this process, in a thread: tests.cli.commands.run_main) while
    this test's loop keeps serving its upstreams."""
    argv = ("doctor", "--config", str(config), "--timeout", "5", *args)
    ran = await asyncio.wait_for(asyncio.to_thread(run_main, *argv, env=env), timeout=60)
    return checked(Report(ran.returncode, ran.stdout, ran.stderr))


async def doctor_process(config: Path, *args: str, env: dict[str, str] | None = None) -> Report:
    """Run the command as a process, for what a process reads once at its start (the CA
    store of SSL_CERT_FILE: aiohttp makes its default TLS context when imported)."""
    process = await asyncio.create_subprocess_exec(
        *BROKER, "doctor", "--config", str(config), "--timeout", "5", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})},
    )  # fmt: skip
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return checked(Report(process.returncode, stdout.decode(), stderr.decode()))


def checked(report: Report) -> Report:
    assert SECRET not in report.stdout + report.stderr
    assert "eyJ" not in report.stdout + report.stderr  # no JWT, whole or in part
    assert "Traceback" not in report.stderr, report.stderr
    return report


@pytest.fixture
async def sandbox(make_sandbox: MakeSandbox) -> Sandbox:
    return await make_sandbox(client_secret=SECRET)


async def test_every_check_passes_against_the_sandbox(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, str(sandbox.url), 8080)
    report = await doctor(config, *ALICE)
    assert report.returncode == 0, report.stdout
    assert report.line("configuration") == f"✓ configuration: {config} loads"
    assert report.line("upstream TLS").startswith("- upstream TLS: ")  # http: skipped
    assert report.mark("partner token") == "✓"
    assert "obtained from /oauth/token in" in report.line("partner token")
    assert report.line("partner token").endswith("; lives 3600 s")
    assert report.line("init path").startswith(
        "✓ init path: /v1/checkout-auth/init minted a checkout JWT for cus_alice/inv_alice_1 in"
    )
    assert re.search(r"; it lives (299|300) s$", report.line("init path"))
    assert report.mark("clock") == "✓"
    assert "Date header" in report.line("clock")
    assert report.mark("session keys") == "✓"
    assert report.mark("IdP JWKS") == "-"
    assert report.mark("Redis") == "-"
    assert report.stdout.splitlines()[-1] == "token-broker doctor: all 5 checks passed"
    assert (await sandbox.stats())["tokens_issued"] == 1


async def test_without_ids_the_init_path_is_probed_without_minting(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    report = await doctor(write_config(tmp_path, str(sandbox.url), 8080))
    assert report.returncode == 0, report.stdout
    assert report.line("init path").startswith(
        "✓ init path: /v1/checkout-auth/init answers a request without invoice_id with 400"
    )
    assert (await sandbox.stats())["tokens_issued"] == 0


async def test_a_wrong_client_secret_fails_the_partner_token(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    sandbox = await make_sandbox(client_secret="the-real-secret-is-another")
    report = await doctor(write_config(tmp_path, str(sandbox.url), 8080), *ALICE)
    assert report.returncode == 4
    assert report.line("partner token") == (
        "✗ partner token: the upstream refused the credentials (token endpoint answered 403)"
        " -> check upstream.client_id and upstream.client_secret (they are per environment:"
        " demo credentials fail in production)"
    )
    assert report.line("init path") == ("- init path: /v1/checkout-auth/init needs a partner token")
    assert report.stdout.splitlines()[-1] == "token-broker doctor: 1 of 4 checks failed"


async def test_an_unreachable_upstream_fails_with_a_hint(tmp_path: Path) -> None:
    report = await doctor(write_config(tmp_path, f"http://127.0.0.1:{free_port()}", 8080))
    assert report.returncode == 4
    assert report.line("partner token").startswith("✗ partner token: /oauth/token:")
    assert "check upstream.base_url and the network path to it" in report.line("partner token")


async def test_a_wrong_init_path_fails(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, str(sandbox.url), 8080)
    env = {"BROKER_UPSTREAM_CHECKOUT_INIT_PATH": "/v1/checkout/init"}
    report = await doctor(config, env=env)
    assert report.returncode == 4
    assert report.line("init path") == (
        "✗ init path: /v1/checkout/init answered 404: no init endpoint there"
        " -> check upstream.checkout_init_path and upstream.base_url"
    )


@pytest.mark.parametrize("ids", [(), ALICE])
async def test_the_other_init_path_is_suggested_where_only_it_answers(
    tmp_path: Path, sandbox: Sandbox, aiohttp_server: AiohttpServer, ids: tuple[str, ...]
) -> None:
    """An environment that serves the init endpoint without /v1, as some of the vendor's do."""
    app = web.Application()
    app.router.add_post("/oauth/token", sandbox.delegate)
    app.router.add_post("/checkout-auth/init", sandbox.delegate)
    upstream = await aiohttp_server(app)
    report = await doctor(write_config(tmp_path, str(upstream.make_url("")), 8080), *ids)
    assert report.returncode == 4
    assert report.line("init path").startswith("✗ init path: /v1/checkout-auth/init answered 4")
    assert report.line("init path").endswith(
        ' -> set upstream.checkout_init_path = "/checkout-auth/init"'
    )


async def test_a_skewed_clock_fails(tmp_path: Path, aiohttp_server: AiohttpServer) -> None:
    app = create_sandbox_app(SandboxSettings(client_secret=SECRET))

    async def an_hour_ahead(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Date"] = email.utils.formatdate(time.time() + 3600, usegmt=True)

    app.on_response_prepare.append(an_hour_ahead)
    upstream = await aiohttp_server(app)
    report = await doctor(write_config(tmp_path, str(upstream.make_url("")), 8080))
    assert report.returncode == 4
    line = report.line("clock")
    assert re.match(
        r"✗ clock: the upstream's clock is 3(599|600)\.\d s ahead of this machine's", line
    )
    assert line.endswith("-> synchronise this machine's clock (NTP): the upstream's expiry"
                         " times are read against it")  # fmt: skip


def redis_section(url: str, namespace: str) -> str:
    key = base64.b64encode(os.urandom(32)).decode()
    return (
        f'[cache]\nbackend = "redis"\nredis_url = "{url}"\nencryption_key = "{key}"\n'
        f'namespace = "{namespace}"\n'
    )


async def test_redis_is_checked_round_trip_version_and_namespace(
    tmp_path: Path, sandbox: Sandbox, redis_server: RedisServer
) -> None:
    namespace = f"doctor-{uuid.uuid4().hex[:8]}"
    client = Redis.from_url(redis_server.url)
    try:
        await client.set(f"{namespace}:partner", b"sealed")
        await client.set(f"{namespace}:replicas", b"1")
        await client.set(f"{namespace}x:other", b"not in the namespace")
    finally:
        await client.aclose()
    extra = redis_section(redis_server.url, namespace)
    report = await doctor(write_config(tmp_path, str(sandbox.url), 8080, extra))
    assert report.returncode == 0, report.stdout
    line = report.line("Redis")
    assert line.startswith(f"✓ Redis: {redis_server.url}: Redis 7.")
    assert "round trip" in line
    assert line.endswith(f"namespace {namespace!r}: 2 keys")


async def test_redis_down_fails_without_showing_its_password(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://:canary-redis-password@127.0.0.1:{port}/0"
    report = await doctor(write_config(tmp_path, str(sandbox.url), 8080, redis_section(url, "x")))
    assert report.returncode == 4
    line = report.line("Redis")
    assert line.startswith(f"✗ Redis: redis://127.0.0.1:{port}/0: ConnectionError")
    assert line.endswith("-> check cache.redis_url, and that Redis answers there")
    assert "canary-redis-password" not in report.stdout + report.stderr


@pytest.fixture
async def https_upstream(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """The sandbox on https with a self-signed certificate for 127.0.0.1; its URL and
    the certificate's file (a CA store that trusts it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    certificate = self_signed_certificate(key, "127.0.0.1", (san, False))
    cert_file, key_file = tmp_path / "upstream.crt", tmp_path / "upstream.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    runner = web.AppRunner(create_sandbox_app(SandboxSettings(client_secret=SECRET)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{port}", cert_file
    finally:
        await runner.cleanup()


async def test_tls_to_an_https_upstream_is_checked(
    tmp_path: Path, https_upstream: tuple[str, Path]
) -> None:
    url, certificate = https_upstream
    config = write_config(tmp_path, url, 8080)
    untrusted = await doctor(config)
    assert untrusted.returncode == 4
    assert untrusted.line("upstream TLS").startswith(
        f"✗ upstream TLS: {url}'s certificate does not verify ("
    )
    assert untrusted.mark("partner token") == "✗"

    trusted = await doctor_process(config, *ALICE, env={"SSL_CERT_FILE": str(certificate)})
    assert trusted.returncode == 0, trusted.stdout
    line = trusted.line("upstream TLS")
    assert line.startswith("✓ upstream TLS: TLSv1.")
    assert f"to {url}, certificate verified, valid until" in line
    assert line.endswith("days (soon))")  # a day left: mentioned, still passing
    assert trusted.mark("partner token") == "✓"
    assert trusted.mark("init path") == "✓"


def jwt_section(jwks_url: str) -> str:
    return (
        '[auth.jwt]\nenabled = true\nissuer = "https://idp.example"\naudience = "checkout"\n'
        f'jwks_url = "{jwks_url}"\n'
    )


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            [{**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(signing_key().public_key())),
              "alg": "ES256", "kid": "idp-1"}],
            "✓ IdP JWKS: 1 signing keys (ES256) from ",
        ),
        (
            [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "kid": "s"}],
            "✗ IdP JWKS: ",
        ),
    ],
)  # fmt: skip
async def test_the_idp_jwks_is_fetched(
    tmp_path: Path,
    sandbox: Sandbox,
    aiohttp_server: AiohttpServer,
    keys: list[dict[str, Any]],
    expected: str,
) -> None:
    async def jwks(_request: web.Request) -> web.Response:
        return web.json_response({"keys": keys})

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    idp = await aiohttp_server(app)
    jwks_url = str(idp.make_url("/jwks.json"))
    report = await doctor(write_config(tmp_path, str(sandbox.url), 8080, jwt_section(jwks_url)))
    assert report.line("IdP JWKS").startswith(expected), report.stdout
    assert report.returncode == (0 if expected.startswith("✓") else 4)
    if report.returncode:
        assert "holds no usable signing key" in report.line("IdP JWKS")


def use_the_test_signing_key(config: Path) -> None:
    """The key of tests.helpers.signing_key, which the `broker` fixture signs with."""
    (config.parent / "signing.pem").write_bytes(
        signing_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


async def test_a_running_broker_must_publish_the_signing_key(
    tmp_path: Path, sandbox: Sandbox, broker: BrokerClient
) -> None:
    url = str(broker.make_url("")).rstrip("/")
    other_key = write_config(tmp_path, str(sandbox.url), 8080)
    report = await doctor(other_key, "--broker", url)
    assert report.returncode == 4
    assert report.line("session keys").startswith(
        f"✗ session keys: {url}/.well-known/jwks.json does not publish kid "
    )
    use_the_test_signing_key(other_key)
    report = await doctor(other_key, "--broker", url)
    assert report.returncode == 0, report.stdout
    assert report.line("session keys").endswith(f"; {url}/.well-known/jwks.json publishes it")


async def test_a_configuration_that_does_not_load_stops_the_doctor(tmp_path: Path) -> None:
    config = write_config(tmp_path, "ftp://nowhere", 8080, "[server]\nprot = 1\n")
    config.write_text(config.read_text().replace("[server]\nprot", "[servers]\nprot"))
    report = await doctor(config)
    assert report.returncode == 1
    lines = report.stdout.splitlines()
    assert lines[0] == (
        f"✗ configuration: {config}: 1 problems -> token-broker check-config {config}"
    )
    assert lines[1:] == ["    [servers]: unknown section (did you mean [server]?)"]


async def test_an_ignored_environment_variable_fails(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, str(sandbox.url), 8080)
    report = await doctor(config, env={"BROKER_SERVER_PROT": "9000"})
    assert report.returncode == 4
    assert report.line("environment") == (
        "✗ environment: BROKER_SERVER_PROT is not a setting, so it is ignored"
        " -> did you mean BROKER_SERVER_PORT?"
    )


@pytest.mark.parametrize(
    "argv",
    [("--customer", "cus_alice"), ("--invoice", "inv_alice_1"),
     ("--customer", "cus alice", "--invoice", "inv_alice_1")],
)  # fmt: skip
async def test_usage_errors_exit_2(tmp_path: Path, argv: tuple[str, ...]) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1", 8080)
    report = await doctor(config, *argv)
    assert report.returncode == 2
    assert report.stdout == ""


def test_the_marks_survive_an_ascii_terminal(tmp_path: Path) -> None:
    """LANG=C with an ASCII stdout: the marks degrade, the command does not crash."""
    import subprocess  # noqa: PLC0415

    config = write_config(tmp_path, "ftp://nowhere", 8080)
    result = subprocess.run(  # noqa: S603 - our own command
        [*BROKER, "doctor", "--config", str(config)],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout.startswith(b"? configuration: ")
    assert b"Traceback" not in result.stderr
