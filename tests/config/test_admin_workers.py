"""The admin API with several workers needs a shared backend: the check, and the
configurations the repository ships (none of them is refused)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from broker.config.checks import Checker
from broker.config.model import AdminSettings, ConfigError, load_settings
from tests.config.test_settings import GOOD, write_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("config/broker.toml", "deploy/compose/broker.toml", "deploy/k8s/base/broker.toml")
ENABLED = AdminSettings(enabled=True, api_key="k" * 32)


def problems(admin: AdminSettings, workers: int, backend: str) -> list[str]:
    found: list[str] = []
    Checker(found).admin_workers(admin, workers=workers, backend=backend)
    return found


@pytest.mark.parametrize("workers", [2, 0], ids=["two", "one-per-core"])
def test_the_admin_api_over_several_workers_on_the_memory_backend_is_refused(
    workers: int,
) -> None:
    (problem,) = problems(ENABLED, workers, "memory")
    assert problem.startswith(
        'admin.enabled with server.workers > 1 needs a shared backend (cache.backend = "redis")'
    )
    assert "each worker has its own revocations" in problem


@pytest.mark.parametrize(
    ("admin", "workers", "backend"),
    [(ENABLED, 1, "memory"), (ENABLED, 4, "redis"), (AdminSettings(), 4, "memory")],
    ids=["one-worker", "redis", "admin-off"],
)
def test_one_worker_a_shared_backend_or_no_admin_api_is_accepted(
    admin: AdminSettings, workers: int, backend: str
) -> None:
    assert problems(admin, workers, backend) == []


@pytest.mark.parametrize("path", SHIPPED)
def test_no_shipped_configuration_is_refused(path: str) -> None:
    raw = tomllib.loads((REPO / path).read_text())
    admin = AdminSettings(enabled=raw.get("admin", {}).get("enabled", False), api_key="k" * 32)
    workers = raw.get("server", {}).get("workers", 1)
    backend = raw.get("cache", {}).get("backend", "memory")
    assert problems(admin, workers, backend) == []


def test_check_config_refuses_the_admin_api_over_several_workers(tmp_path: Path) -> None:
    """What ``check-config`` and ``serve --config`` load: the file's own combination."""
    body = GOOD + '[server]\nworkers = 2\n[admin]\nenabled = true\napi_key = "' + "k" * 32 + '"\n'
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, body), {})
    assert any(p.startswith("admin.enabled with server.workers > 1") for p in caught.value.problems)
    load_settings(write_config(tmp_path, body.replace("workers = 2", "workers = 1")), {})
