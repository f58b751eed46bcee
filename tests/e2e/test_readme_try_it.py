"""README "Try it": the very commands of its second bash block, run with bash against the local runner.

The section's first block must be ``make dev`` (the runner, which this test starts itself as the
e2e fixture does); the second is run unchanged, ``B`` pointing at the test's server. If the README
steps break, or their output changes, this test fails.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.conftest import Local

README = REPO_ROOT / "README.md"
HEADING = "## Try it"


def try_it_blocks() -> list[str]:
    """The fenced ```bash blocks of the README section whose heading starts with "## Try it"."""
    text = README.read_text()
    start = text.index(f"\n{HEADING}")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"^```bash\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


def test_the_try_it_section_is_make_dev_then_one_block() -> None:
    blocks = try_it_blocks()
    assert len(blocks) == 2, blocks
    assert blocks[0].strip() == "make dev"
    assert blocks[1].startswith("B=${B:-http://127.0.0.1:3000}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's commands need curl")
def test_the_try_it_commands_finalize_a_purchase_meter_a_call_and_report(local: Local) -> None:
    commands = try_it_blocks()[1]
    completed = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + commands],  # the first failing step stops it
        env={**os.environ, "B": local.server.base_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, (completed.stdout, completed.stderr, local.log.getvalue()[-3000:])
    output = completed.stdout
    assert "offer: gemini-api-key" in output
    assert "\npaid\n" in output
    purchase_id = re.search(r"^purchase: ([0-9a-f-]{36})$", output, flags=re.MULTILINE)
    assert purchase_id, output
    assert re.search(r'"cost":\s*"0\.012000000".*"hold_status":\s*"captured"', output), output
    assert "\n19.988000000\n" in output

    report = output[output.index("row_type,") :]
    totals = [row for row in csv.DictReader(io.StringIO(report)) if row["row_type"] == "total"]
    assert len(totals) == 1, report
    total = totals[0]
    assert (total["deposits"], total["usage_cost"], total["closing_balance"], total["opening_balance"]) == (
        "20.000000000",
        "0.012000000",
        "19.988000000",
        "0.000000000",
    )
