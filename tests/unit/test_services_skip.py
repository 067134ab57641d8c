"""Where a real service is missing, its e2e tests skip naming the package to install (they
never fail or hang): what `make test` does on a machine without redis-server/PostgreSQL."""

from __future__ import annotations

import glob
import shutil

import pytest
import services


def test_missing_servers_skip_with_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    with pytest.raises(pytest.skip.Exception, match="apt-get install redis-server"):
        with services.redis_server():
            pass
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        with services.postgres_server():
            pass


def test_a_server_that_exits_at_once_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # a redis-server that cannot start: one clear error, not a 20 s wait
    monkeypatch.setattr(shutil, "which", lambda name: "/bin/false")
    with pytest.raises(RuntimeError, match="redis-server exited with 1"):
        with services.redis_server():
            pass
