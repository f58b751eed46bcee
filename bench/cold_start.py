"""Cold-start import time of every function's handler, in a fresh interpreter each time.

A Lambda cold start pays for importing ``app.py`` (and the shared layer it pulls
in) before the first request. For each folder under ``functions/`` this runs
``python -c "import app"`` in a new process with the layer and the function on
``sys.path`` (as Lambda lays them out), ``--runs`` rounds over all functions
after one uncounted warm-up round, and reports the median and the worst wall
time of the import, plus whether a chain library (web3, eth_account, eth_abi)
was loaded by it.

Routes that touch a chain import web3 lazily, on their first chain call; for
them the table also reports import + ``import web3`` (what their first request
pays). Targets (issue #8): ≤ 300 ms for functions without chain access,
≤ 1.5 s for chain functions (import + web3).

Exit status: 0 done, 2 with ``--enforce`` when a target is missed or a function
without chain access loads a chain library at import.

    .venv/bin/python bench/cold_start.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS_DIR = REPO_ROOT / "functions"
LAYER_DIR = REPO_ROOT / "layers" / "shared"

#: Functions that read or write a chain (web3 on their first chain call).
CHAIN_FUNCTIONS = frozenset(
    {
        "checkout_wallet_create",
        "checkout_wallet_verify",
        "checkout_finalize",
        "verify_topup",
        "sweep",
        "chain_sweep",
    }
)
CHAIN_MODULES = ("web3", "eth_account", "eth_abi")
PLAIN_TARGET_S = 0.300
CHAIN_TARGET_S = 1.5

_PROBE = """
import json, sys, time
started = time.perf_counter()
import app
imported = time.perf_counter() - started
loaded = sorted(name for name in {modules!r} if name in sys.modules)
web3_s = None
if {with_web3!r}:
    started_web3 = time.perf_counter()
    import web3
    web3_s = time.perf_counter() - started_web3
print(json.dumps({{"import_s": imported, "web3_s": web3_s, "chain_modules": loaded}}))
"""

# Settings a handler may read at import; nothing is contacted during an import.
_ENVIRONMENT = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "POWERTOOLS_SERVICE_NAME": "vendor-billing",
    "POWERTOOLS_METRICS_NAMESPACE": "OfficeXVendorBilling",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
}


@dataclass(frozen=True)
class ColdStart:
    folder: str
    chain: bool
    import_s: list[float]
    first_call_s: list[float]  # import + web3 for chain functions, = import otherwise
    chain_modules_at_import: list[str]

    @property
    def measured_s(self) -> float:
        return statistics.median(self.first_call_s)

    @property
    def target_s(self) -> float:
        return CHAIN_TARGET_S if self.chain else PLAIN_TARGET_S

    @property
    def problems(self) -> list[str]:
        found = []
        if self.measured_s > self.target_s:
            found.append(f"{self.measured_s * 1000:.0f} ms > {self.target_s * 1000:.0f} ms")
        if not self.chain and self.chain_modules_at_import:
            found.append(f"loads {', '.join(self.chain_modules_at_import)} at import")
        return found


@dataclass(frozen=True)
class _Probe:
    """One fresh interpreter importing one function's handler."""

    import_s: float
    first_call_s: float  # import + web3 for chain functions, = import otherwise
    chain_modules: list[str]


def probe(folder: str) -> _Probe:
    chain = folder in CHAIN_FUNCTIONS
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "AWS_"))},
        **_ENVIRONMENT,
        "PYTHONPATH": os.pathsep.join([str(FUNCTIONS_DIR / folder), str(LAYER_DIR)]),
        "PYTHONDONTWRITEBYTECODE": "",
    }
    finished = subprocess.run(
        [sys.executable, "-c", _PROBE.format(modules=CHAIN_MODULES, with_web3=chain)],
        cwd=FUNCTIONS_DIR / folder,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if finished.returncode != 0:
        raise SystemExit(f"{folder}: import failed\n{finished.stderr}")
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    return _Probe(result["import_s"], result["import_s"] + (result["web3_s"] or 0.0), result["chain_modules"])


def measure(folders: list[str], runs: int) -> list[ColdStart]:
    """``runs`` rounds over all ``folders``, after one round that is not counted.

    Round-robin, not one function after another: this VM's speed drifts over tens of seconds (the
    first imports after a quiet spell ran 30-50 % slower than the same imports a few seconds
    later), so every function gets its share of slow and fast moments, and the warm-up round
    takes the page cache and the ramp-up out of the figures.
    """
    for folder in folders:
        probe(folder)
    probes: dict[str, list[_Probe]] = {folder: [] for folder in folders}
    for _ in range(runs):
        for folder in folders:
            probes[folder].append(probe(folder))
    return [
        ColdStart(
            folder,
            folder in CHAIN_FUNCTIONS,
            [found.import_s for found in probes[folder]],
            [found.first_call_s for found in probes[folder]],
            probes[folder][-1].chain_modules,
        )
        for folder in folders
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters per function (median)")
    parser.add_argument("--function", action="append", help="only this folder (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--enforce", action="store_true", help="exit 2 when a target is missed")
    args = parser.parse_args(argv)

    folders = args.function or sorted(
        path.name for path in FUNCTIONS_DIR.iterdir() if (path / "app.py").exists()
    )
    results = measure(folders, args.runs)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "function": result.folder,
                        "chain": result.chain,
                        "import_ms_median": round(statistics.median(result.import_s) * 1000, 1),
                        "first_call_ms_median": round(result.measured_s * 1000, 1),
                        "chain_modules_at_import": result.chain_modules_at_import,
                        "problems": result.problems,
                    }
                    for result in results
                ],
                indent=2,
            )
        )
    else:
        print(f"python {sys.version.split()[0]}, {args.runs} fresh interpreters per function (median / max)")
        print(f"{'function':<26} {'chain':<6} {'import ms':>16} {'+ web3 ms':>10} {'target':>7}  verdict")
        for result in results:
            imports_ms = (
                f"{statistics.median(result.import_s) * 1000:.0f} / {max(result.import_s) * 1000:.0f}"
            )
            first_ms = f"{result.measured_s * 1000:.0f}" if result.chain else "-"
            verdict = "; ".join(result.problems) or "ok"
            print(
                f"{result.folder:<26} {'yes' if result.chain else 'no':<6} {imports_ms:>16} {first_ms:>10} "
                f"{result.target_s * 1000:>5.0f}ms  {verdict}"
            )
    missed = [result for result in results if result.problems]
    return 2 if args.enforce and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
