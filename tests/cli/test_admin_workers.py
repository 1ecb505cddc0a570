"""`serve` refuses an admin listener over several workers without a shared backend.

Each worker has its own memory: a revocation (or a promote) through the admin API would
reach only the worker that answered, while the operator is told it worked.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli.commands import BROKER, write_config

ADMIN = '[admin]\nenabled = true\nhost = "127.0.0.1"\nport = 0\napi_key = "{key}"\n'.format(
    key="admin-key-" + "x" * 40
)
REFUSED = 'admin.enabled with server.workers > 1 needs a shared backend (cache.backend = "redis")'


@pytest.mark.parametrize(
    ("configured", "flags"), [(2, ()), (1, ("--workers", "2"))], ids=["config", "flag"]
)
def test_serve_refuses_an_admin_listener_over_several_workers_on_the_memory_backend(
    tmp_path: Path, configured: int, flags: tuple[str, ...]
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", 0, ADMIN)
    text = config.read_text().replace("[server]\n", f"[server]\nworkers = {configured}\n", 1)
    config.write_text(text)
    ran = subprocess.run(  # noqa: S603 - our own command, fixed arguments
        [*BROKER, "serve", "--config", str(config), *flags],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert ran.returncode == 1, ran.stderr
    assert REFUSED in ran.stderr
    assert "Traceback" not in ran.stderr
