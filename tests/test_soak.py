"""The soak scenario, short: tasks, flights, fds and RSS end flat after a fault-heavy load.

The long run (10 minutes, 300 streams) is done by hand and recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_short_soak_ends_flat(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "12", "--streams", "40", "--interval", "3"],
        capture_output=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    out = result.stdout.decode()
    assert result.returncode == 0, out[-3000:] + result.stderr.decode()[-3000:]
    assert '"tasks back to idle": true' in out and '"RSS flat' in out
    assert '"no client connection left open": true' in out
