"""Export a training run's policy as a production bundle: ``python -m experiments.export run=<run> out=<folder>``.

::

    python -m experiments.export run=outputs/train/default_ppo_s0                    # -> <run>/bundle
    python -m experiments.export run=outputs/train/default_ppo_s0 out=bundles/ppo_v1 model=best

Writes ``policy.onnx``, ``manifest.json`` and ``example_stats.csv`` (see :mod:`agents.export`) and
prints the bundle folder with its export-time parity figures. Arguments are Hydra-style
``key=value`` pairs; there is nothing to compose (the run folder holds its resolved config), so a
small parser stands in for Hydra. Then try the bundle the way production will::

    python -m agents.allocator <out> <out>/example_stats.csv --budget 50000 --hour 14
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

KEYS = {
    "run": "training run folder (model.zip, vecnormalize.npz, config.yaml, run_manifest.json)",
    "out": "bundle folder (default: <run>/bundle)",
    "model": "final (model.zip, default) or best (best_model.zip of the periodic evaluations)",
}


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    """``key=value`` pairs over :data:`KEYS`; raises ``ValueError`` naming the offending argument."""
    args: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not value:
            raise ValueError(f"arguments are key=value pairs, got {arg!r}")
        if key not in KEYS:
            raise ValueError(f"unknown key {key!r} in {arg!r}; expected one of {list(KEYS)}")
        args[key] = value
    if "run" not in args:
        raise ValueError("missing run=<training run folder>")
    if args.get("model", "final") not in ("final", "best"):
        raise ValueError(f"model must be final or best, got {args['model']!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("keys:\n" + "\n".join(f"  {k}=  {v}" for k, v in KEYS.items()))
        return 0
    try:
        args = parse_args(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from agents.export import ExportError, export_bundle  # after parsing: torch and SB3 take seconds to import

    run_dir = Path(args["run"])
    out_dir = Path(args.get("out", run_dir / "bundle"))
    try:
        bundle = export_bundle(run_dir, out_dir, which=args.get("model", "final"))
    except (ExportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    manifest = json.loads((bundle / "manifest.json").read_text())
    print(
        json.dumps(
            {
                "bundle": str(bundle),
                "algorithm": manifest["algorithm"],
                "max_plans": manifest["max_plans"],
                "parity": manifest["parity"],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
