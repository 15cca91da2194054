"""The suite itself: its test client imports without a warning."""

from __future__ import annotations

import subprocess
import sys


def test_the_test_client_imports_without_a_warning() -> None:
    """Starlette's TestClient warns that running it on httpx is deprecated; on httpx2 (the dev
    extra) it does not."""
    imported = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import fastapi.testclient"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
