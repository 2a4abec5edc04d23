"""Ship a trained allocator with the package: ``python -m experiments.ship results/main --agent generalist``.

Copies the production bundle of the training run the report scored as the agent (``<run>/bundle``:
``policy.onnx``, ``manifest.json``, ``example_stats.csv``; ``<run>`` is the ``agent.run`` of the
agent's evaluation run folders under ``<results>/eval``, which must all name the same run: for the main
job, ``<results>/train``) into ``agents/bundles/<name>/`` and records in the manifest's
``training`` object how it was scored: ``training.evaluation`` holds, per env of the results' report
(``summary.csv`` and ``paired.csv``), the agent's IQM score with its interval, its normalised score,
and its paired difference to the best heuristic and to uniform with intervals, probabilities of
improvement and verdicts, with the report's episodes and the command that made it. The bundle's
digest (:func:`agents.allocator.bundle_digest`) changes with the manifest; it is written beside the
bundle and printed, and must be pasted into :data:`agents.allocator.SHIPPED_BUNDLES`, which pins it:
an installed bundle with another manifest or graph is refused (``python -m agents.allocator generalist``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from agents.allocator import (
    DIGEST_FILE,
    EXAMPLE_FILE,
    MANIFEST_FILE,
    POLICY_FILE,
    SHIPPED_DIR,
    Bundle,
    BundleError,
    bundle_digest,
)

SUMMARY_FIELDS = ("seeds", "episodes", "score_iqm", "score_ci_low", "score_ci_high", "normalised_iqm")
PAIRED_FIELDS = ("baseline", "episodes", "diff", "diff_ci_low", "diff_ci_high", "diff_pct", "poi", "verdict")


class ShipError(RuntimeError):
    """The results folder lacks what a shipped bundle must record."""


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value.item() if hasattr(value, "item") else value


def evaluation(results: Path, agent: str) -> dict[str, Any]:
    """The agent's scores per env from the report in ``results`` (``summary.csv``, ``paired.csv``)."""
    try:
        summary = pd.read_csv(results / "summary.csv")
        paired = pd.read_csv(results / "paired.csv")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ShipError(f"{results} has no readable report (summary.csv, paired.csv): {exc}") from exc
    for name, table, columns in (
        ("summary.csv", summary, ("env", "agent")),
        ("paired.csv", paired, ("env", "agent", "role")),
    ):
        missing = [c for c in columns if c not in table]
        if missing:
            raise ShipError(f"{results / name} lacks the column(s) {missing}: not a report of experiments.report")
    rows = summary[summary["agent"] == agent]
    if rows.empty:
        known = sorted(summary["agent"].unique())
        raise ShipError(f"agent {agent!r} is not in {results / 'summary.csv'}; agents there: {known}")
    out: dict[str, Any] = {}
    for _, row in rows.iterrows():
        env = row["env"]
        record = {k: _clean(row[k]) for k in SUMMARY_FIELDS if k in row}
        for _, p in paired[(paired["agent"] == agent) & (paired["env"] == env)].iterrows():
            record[f"vs_{p['role'].replace(' ', '_')}"] = {k: _clean(p[k]) for k in PAIRED_FIELDS}
        out[env] = record
    return out


def evaluated_run(results: Path, agent: str) -> Path:
    """The training run the report in ``results`` scored as ``agent``: the ``agent.run`` that every one of
    the agent's evaluation run folders (``results/eval/**/config.yaml``) names. A relative path is taken
    from the working directory, as ``experiments.evaluate`` took it."""
    runs: dict[str, list[Path]] = {}
    for config in sorted((results / "eval").rglob("config.yaml")):
        try:
            cfg = yaml.safe_load(config.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ShipError(f"{config} is not a readable run config: {exc}") from exc
        spec = cfg.get("agent") if isinstance(cfg, dict) else None
        if isinstance(spec, dict) and spec.get("name") == agent:
            runs.setdefault(str(spec.get("run")), []).append(config.parent)
    if not runs:
        raise ShipError(f"no evaluation run of agent {agent!r} under {results / 'eval'}: cannot tell which training "
                        "run the report scored")  # fmt: skip
    if len(runs) > 1 or "None" in runs:
        named = {run: [str(f) for f in folders[:2]] for run, folders in runs.items()}
        raise ShipError(f"the evaluation runs of agent {agent!r} do not all name one training run (agent.run): "
                        f"{named}")  # fmt: skip
    return Path(next(iter(runs)))


def ship(results: Path, agent: str, out: Path) -> str:
    """Copy the bundle of the training run scored as ``agent`` (:func:`evaluated_run`) to ``out`` with
    ``training.evaluation``; returns the new digest."""
    scores = evaluation(results, agent)
    source = evaluated_run(results, agent) / "bundle"
    try:
        plans_served = Bundle.load(source).manifest["plans_served"]  # refuse a broken bundle before copying
    except (BundleError, OSError) as exc:
        raise ShipError(f"{source} is not a usable bundle: {exc}") from exc
    if out.exists():
        if out.resolve() == source.resolve():
            raise ShipError(f"--out {out} is the bundle being shipped")
        if not (out / MANIFEST_FILE).is_file():
            raise ShipError(f"{out} exists and is not a bundle (no {MANIFEST_FILE}): refusing to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in (POLICY_FILE, EXAMPLE_FILE):
        shutil.copy2(source / name, out / name)
    manifest = json.loads((source / MANIFEST_FILE).read_text())
    manifest["training"].pop("run_dir", None)  # a path on the machine that trained it
    manifest["training"]["evaluation"] = {
        "report": "python -m experiments.report <results>/eval (make run); paired on the same env seeds",
        "agent": agent,
        "per_env": scores,
        "note": f"envs with more plans than this bundle serves ({plans_served}) were scored by the training "
        "run's set policy on the full width (agents.trained), not by this graph",
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, allow_nan=False))
    digest = bundle_digest(out)
    (out / DIGEST_FILE).write_text(digest + "\n")
    Bundle.load(out, expected_digest=digest)
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.ship", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a main-job results folder (make run: results/main)")
    parser.add_argument("--agent", default="generalist", help="the agent's name in the report (default generalist)")
    parser.add_argument("--out", type=Path, default=None, help="bundle folder (default agents/bundles/<agent>)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else SHIPPED_DIR / args.agent
    try:
        digest = ship(args.results, args.agent, out)
    except (ShipError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"shipped {out} with digest {digest}; pin it in agents.allocator.SHIPPED_BUNDLES")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
