"""Trained Stable-Baselines3 policy + its VecNormalize statistics -> a bundle for production.

:func:`export_bundle` reads a training run folder (``model.zip``, ``vecnormalize.npz``, the resolved
config, checked against the run's SHA-256 manifest: :func:`read_run`) and writes a folder that
:class:`agents.allocator.Bundle` loads with ONNX Runtime alone:

- ``policy.onnx``: inputs ``obs`` (batch x width float32, the raw observation of
  :func:`envs.features.build_observation`) and ``mask`` (batch x max_plans float32, 1 for plans that
  may receive budget); output ``shares`` (batch x max_plans float64). Inside the graph, in this order:
  VecNormalize's ``clip((obs - mean) / sqrt(var + eps), -clip_obs, clip_obs)`` computed in float64
  exactly as NumPy does it in SB3, the policy's deterministic action (``policy._predict(...,
  deterministic=True)``: the Gaussian mean for PPO/A2C, the tanh of the actor for SAC/TD3), clipped to
  [-1, 1] as SB3's ``predict`` does, times the env's temperature, and the softmax masked to the active
  plans (float64 like the env's, all-zero when no plan is active), as
  :meth:`envs.budget_env.BudgetShiftEnv.action_to_shares`.
  A ``rank_residual`` run (:mod:`agents.residual`) instead outputs ``tilt`` (batch x max_plans float64):
  ``exp(scale x action)`` on the mask, 0 off it; its manifest (schema 3) adds ``head`` (scale, rank's
  knobs, each channel's traffic by step), and parity also replays the episode through the loader hour
  by hour with the state each call hands on (``parity.fill_max_abs_diff``).
- ``manifest.json``: schema version, the ordered features with meaning and unit, ``max_plans``, the
  temperature, the action limits and compliance caps of the training scenario, the training config,
  algorithm and provenance, library versions, the sha256 of ``policy.onnx``, the export-time parity
  figures and an example request with the trained model's answer.
- ``example_stats.csv``: one hour of a simulated episode (the training scenario, driven by the trained
  policy) in the loader's input format.

No pickle leaves: VecNormalize's statistics become graph constants and the manifest is JSON.

Export runs the trained model (SB3 + its VecNormalize) and the ONNX graph (ONNX Runtime) side by side
on one simulated episode and refuses to write a bundle whose shares differ by more than
:data:`PARITY_TOLERANCE`.

Parity, and what it cannot promise: the graph reproduces SB3's float64 normalisation bit for bit,
but the network runs in float32 in both torch and ONNX Runtime with different summation orders, so
shares differ by ~1e-6 (measured: at most ~5e-6 over 10,000 observations per preset). The simulator's
outcome is discontinuous in the budgets (a plan bids only while its remaining step budget covers its
bid), and a 1e-9 relative change of one share can flip an auction and send the episode down another
trajectory (scores then differ by several percent). So an episode driven by the bundle and a separate
one driven by the SB3 model generally part ways even though every decision agrees to ~1e-6; the tests
check the closed loop step by step instead (``tests/test_export.py``), and score identity where the
actions saturate.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from agents.allocator import (
    DIGEST_FILE,
    EXAMPLE_FILE,
    MANIFEST_FILE,
    MASK_INPUT,
    OBS_INPUT,
    PLAIN_SCHEMA_VERSION,
    POLICY_FILE,
    SCHEMA_VERSION,
    SHARES_OUTPUT,
    TILT_OUTPUT,
    Bundle,
    bundle_digest,
    read_stats_csv,
    sha256_file,
    stats_columns,
    write_stats_csv,
)
from agents.heuristics import channel_traffic
from agents.residual import HeadSpec, RankResidualEnv, head_spec, tilt_from_action
from agents.sb3 import ALGOS, RUN_CONFIG, RUN_MODELS, AgentSpecError, RunFolderError, load_run
from envs.budget_env import BudgetShiftEnv
from envs.features import (
    CHANNELS,
    GLOBAL_FEATURES,
    N_PLAN_FEATURES,
    PLAN_FEATURES,
    STAT_COLUMNS,
    VERTICALS,
    Clock,
    feature_names,
    observation_size,
)
from envs.scenario import Scenario
from envs.shares import has_share_limits, masked_softmax, vertical_caps

#: Max abs difference in shares between the trained model and the exported graph that export accepts.
PARITY_TOLERANCE = 1e-5
OPSET = 17
#: Algorithms (keys of :data:`agents.sb3.ALGOS`) whose deterministic action the graph reproduces:
#: RecurrentPPO carries an LSTM state from step to step, which an hourly stateless bundle cannot.
EXPORTABLE = tuple(name for name in ALGOS if name != "RecurrentPPO")
VERSION_LIBRARIES = (
    "budgetshift",
    "numpy",
    "torch",
    "stable-baselines3",
    "sb3-contrib",
    "gymnasium",
    "onnx",
    "onnxruntime",
)
#: The example request is the decision at this hour of the second day (the first when episodes are shorter).
EXAMPLE_HOUR = 14


class ExportError(RuntimeError):
    """A run folder that cannot be exported, or an export that fails its parity check."""


@dataclass
class TrainedRun:
    """What export needs from a training run folder."""

    run_dir: Path
    config: dict[str, Any]  # the resolved config as plain data
    algorithm: str  # one of EXPORTABLE
    scenario: Scenario
    model: BaseAlgorithm
    vecnormalize: VecNormalize | None  # statistics only (no venv attached); None if training did not normalise
    which: str = "final"  # key of RUN_MODELS

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        return obs if self.vecnormalize is None else self.vecnormalize.normalize_obs(obs)

    @property
    def head(self) -> HeadSpec:
        return head_spec(self.config["agent"].get("head"))

    def tilt(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """A rank_residual run's tilt on rank's worth, as training computed it (0 outside the masks)."""
        actions, _ = self.model.predict(self.normalize(obs), deterministic=True)
        return np.where(masks, tilt_from_action(actions, self.head.scale), 0.0)

    def shares(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """The trained model's budget shares, computed as training did: SB3's predict + the env's softmax."""
        actions, _ = self.model.predict(self.normalize(obs), deterministic=True)
        temperature = self.scenario.temperature
        return np.stack(
            [masked_softmax(a.astype(np.float64) * temperature, m) for a, m in zip(actions, masks, strict=True)]
        )


# -------------------------------------------------------------------------------------------------
# Reading a run folder


def _algorithm_name(config: dict[str, Any], run_dir: Path) -> str:
    """The :data:`EXPORTABLE` algorithm of the run's ``agent.algo`` (``PPO``, ...), else ``agent.name``, any case."""
    agent = config.get("agent")
    algo = agent.get("algo", agent.get("name")) if isinstance(agent, dict) else agent
    name = {a.lower(): a for a in EXPORTABLE}.get(str(algo).lower())
    if name is not None:
        return name
    why = ""
    if str(algo).lower() == "recurrentppo":
        why = " (RecurrentPPO carries an LSTM state from step to step, which an hourly stateless bundle cannot)"
    raise ExportError(f"{run_dir / RUN_CONFIG}: agent.algo is {algo!r}; export supports {list(EXPORTABLE)}{why}")


def read_run(run_dir: Path, which: str = "final") -> TrainedRun:
    """Load the model (``which``: a key of :data:`RUN_MODELS`), its normalisation statistics and the scenario.

    Through :func:`agents.sb3.load_run`: every file is checked against the run's SHA-256 manifest
    (corruption and accidental edits, not tampering) and nothing is unpickled.
    """
    run_dir = Path(run_dir)
    if which not in RUN_MODELS:
        raise ExportError(f"which must be one of {list(RUN_MODELS)}, got {which!r}")
    model_path = run_dir / RUN_MODELS[which][0]
    if not model_path.is_file():
        raise ExportError(f"{model_path} is missing; is {run_dir} a training run folder?")
    try:
        config, scenario, model, vecnormalize = load_run(run_dir, which)
    except (RunFolderError, AgentSpecError) as exc:
        raise ExportError(str(exc)) from exc
    return TrainedRun(run_dir, config, _algorithm_name(config, run_dir), scenario, model, vecnormalize, which)


def policy_kind(model: BaseAlgorithm) -> str:
    """``set`` for the permutation-invariant policies of :mod:`agents.policies`, else ``mlp``."""
    return "set" if type(model.policy).__module__ == "agents.policies" else "mlp"


# -------------------------------------------------------------------------------------------------
# The graph


class PolicyGraph(torch.nn.Module):
    """Raw observation + mask -> budget shares: normalisation, deterministic action, masked softmax.

    With ``tilt_scale`` (a rank_residual head): -> the tilt ``exp(tilt_scale * action)`` on the mask, 0 off it.
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        vecnormalize: VecNormalize | None,
        temperature: float,
        tilt_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.tilt_scale = tilt_scale
        self.policy = policy
        self.normalise = vecnormalize is not None and vecnormalize.norm_obs
        if self.normalise:
            rms = vecnormalize.obs_rms
            # sqrt(var + eps) in NumPy float64, as VecNormalize computes it (the sqrt is correctly rounded, so
            # the graph's division then gives SB3's normalised observation bit for bit).
            std = np.sqrt(rms.var + vecnormalize.epsilon)
            self.register_buffer("obs_mean", torch.as_tensor(np.asarray(rms.mean, dtype=np.float64)))
            self.register_buffer("obs_std", torch.as_tensor(np.asarray(std, dtype=np.float64)))
            self.clip_obs = float(vecnormalize.clip_obs)
        self.temperature = float(temperature)

    def forward(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = obs
        if self.normalise:
            x = ((obs.double() - self.obs_mean) / self.obs_std).clamp(-self.clip_obs, self.clip_obs).float()
        action = self.policy._predict(x, deterministic=True).reshape(obs.shape[0], -1)
        active = mask > 0.5
        if self.tilt_scale is not None:
            tilt = torch.exp(action.clamp(-1.0, 1.0).double() * self.tilt_scale)
            return torch.where(active, tilt, torch.zeros_like(tilt))
        logits = action.clamp(-1.0, 1.0).double() * self.temperature
        # Padded and inactive plans get a huge negative logit (not -inf: an all-masked row must not be NaN)
        # and are zeroed after the exp, so a row without active plans returns all zeros like the env.
        z = torch.where(active, logits, torch.full_like(logits, -1e30))
        e = torch.exp(z - z.max(dim=1, keepdim=True).values) * active.double()
        return e / e.sum(dim=1, keepdim=True).clamp_min(1e-300)


def export_onnx(run: TrainedRun, path: Path) -> None:
    """Write the policy graph of ``run`` to ``path`` and check it with ``onnx.checker``."""
    policy = run.model.policy
    policy.set_training_mode(False)
    head = run.head
    graph = PolicyGraph(
        policy, run.vecnormalize, run.scenario.temperature, head.scale if head.residual else None
    ).eval()
    output = TILT_OUTPUT if head.residual else SHARES_OUTPUT
    width, max_plans = observation_size(run.scenario.max_plans), run.scenario.max_plans
    obs = torch.zeros(2, width)
    mask = torch.ones(2, max_plans)
    validate = torch.distributions.Distribution._validate_args
    # Distribution argument checks are data-dependent asserts: the tracer cannot put them in a graph.
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript-based exporter (dynamo=False) traces the module as plain tensor ops and needs no
            # onnxscript; torch warns that it is deprecated in favour of the dynamo exporter.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.onnx.export(
                graph,
                (obs, mask),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[OBS_INPUT, MASK_INPUT],
                output_names=[output],
                dynamic_axes={OBS_INPUT: {0: "batch"}, MASK_INPUT: {0: "batch"}, output: {0: "batch"}},
            )
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)


# -------------------------------------------------------------------------------------------------
# Episode used for the parity check and the example request


@dataclass
class EpisodeRecord:
    obs: np.ndarray  # (steps, width) float32 raw observations
    masks: np.ndarray  # (steps, max_plans) bool
    score: float
    example_stats: dict[str, np.ndarray]
    example_active: np.ndarray  # (n_plans,) bool
    example_clock: dict[str, Any]
    example_obs: np.ndarray  # (width,) float32
    # A rank_residual run: each step's (stats, clock, active) and the fill's shares (before the env's limits).
    steps: list[tuple[dict[str, np.ndarray], Clock, np.ndarray]] | None = None
    fill_shares: list[np.ndarray] | None = None


def run_episode(run: TrainedRun, seed: int = 0) -> EpisodeRecord:
    """One episode of the training scenario driven by the trained model (deterministic).

    A rank_residual run plays in :class:`agents.residual.RankResidualEnv` with the fill's compliance caps
    set to the bundle's (what the production fill applies), and records every step's reporting and fill.
    """
    residual = run.head.residual
    env = BudgetShiftEnv(run.scenario)
    wrapper = RankResidualEnv(env, run.head.scale, run.head.rank_params, run.head.base) if residual else None
    obs, _ = (wrapper or env).reset(seed=seed)
    steps: list[tuple[dict[str, np.ndarray], Clock, np.ndarray]] = []
    fill_shares: list[np.ndarray] = []
    if wrapper is not None:
        wrapper.rank.vertical_cap = vertical_caps(_compliance_caps(run))
    sc = run.scenario
    example_t = min(sc.horizon - 1, (sc.steps_per_day if sc.days > 1 else 0) + EXAMPLE_HOUR // sc.hours_per_step)
    all_obs, masks, example = [], [], None
    done, score = False, 0.0
    while not done:
        mask = np.zeros(sc.max_plans, dtype=bool)
        mask[: env.n_plans] = env.active_mask()
        if env.t == example_t:
            stats = {k: np.array(v, copy=True) for k, v in env.reporting_stats().items()}
            example = (stats, env.active_mask().copy(), asdict(env.clock()), obs.copy())
        all_obs.append(obs)
        masks.append(mask)
        action, _ = run.model.predict(run.normalize(obs[None]), deterministic=True)
        if wrapper is not None:
            stats = {k: np.array(v, copy=True) for k, v in env.reporting_stats().items()}
            steps.append((stats, env.clock(), env.active_mask().copy()))
            obs, reward, done, _, _ = wrapper.step(action[0])
            fill_shares.append(wrapper.last_shares)
        else:
            obs, reward, done, _, _ = env.step(action[0])
        score += reward
    assert example is not None
    recorded = {"steps": steps, "fill_shares": fill_shares} if wrapper is not None else {}
    return EpisodeRecord(np.stack(all_obs), np.stack(masks), score, *example, **recorded)


# -------------------------------------------------------------------------------------------------
# Manifest


def _library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in VERSION_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _features(max_plans: int) -> list[dict[str, Any]]:
    described = [f for _ in range(max_plans) for f in PLAN_FEATURES] + list(GLOBAL_FEATURES)
    return [
        {"index": i, "name": name, "meaning": f.meaning, "unit": f.unit}
        for i, (name, f) in enumerate(zip(feature_names(max_plans), described, strict=True))
    ]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _compliance_caps(run: TrainedRun) -> dict[str, float]:
    """The training scenario's caps; none for a run trained on a scenario family, whose caps changed with
    each portfolio (a vertical's cap is lifted where it holds more plans than its cap, envs/family.py):
    a fixed cap would withhold budget the policy never saw withheld. A deployment bound by a
    compliance cap enforces it downstream of the allocation."""
    if run.config.get("family") is not None:
        return {}
    return {v.name: v.max_spend_share for v in run.scenario.verticals if v.max_spend_share < 1.0}


def build_manifest(run: TrainedRun, policy_path: Path, parity: dict[str, Any]) -> dict[str, Any]:
    sc = run.scenario
    limits = None
    if has_share_limits(sc.min_share, sc.max_share, sc.max_change):
        limits = {"min_share": sc.min_share, "max_share": sc.max_share, "max_change": sc.max_change}
    vn = run.vecnormalize
    kind = policy_kind(run.model)
    provenance_path = run.run_dir / "provenance.json"
    head = run.head
    output = (
        {TILT_OUTPUT: ["batch", sc.max_plans, "float64", "multiplier on rank's worth (0 off the mask)"]}
        if head.residual
        else {SHARES_OUTPUT: ["batch", sc.max_plans, "float64", "share of budget left today"]}
    )
    extra = {}
    if head.residual:
        extra["head"] = {
            "kind": head.kind,
            "scale": head.scale,
            "rank": asdict(head.rank_params),
            "channels": list(CHANNELS),
            "traffic": channel_traffic(sc).tolist(),
            "note": "shares = rank's fill (agents.heuristics.TiltedRank) on rank's worth x the graph's tilt; "
            "pass each allocation's state to the next call",
        }
    return _jsonable(
        {
            **extra,
            "schema_version": SCHEMA_VERSION if head.residual else PLAIN_SCHEMA_VERSION,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "algorithm": run.algorithm,
            "policy_class": f"{type(run.model.policy).__module__}.{type(run.model.policy).__qualname__}",
            "max_plans": sc.max_plans,
            "policy_kind": kind,
            "plans_served": sc.max_plans if kind == "set" else sc.n_plans,
            "n_plan_features": N_PLAN_FEATURES,
            "n_global_features": len(GLOBAL_FEATURES),
            "observation_size": observation_size(sc.max_plans),
            "features": _features(sc.max_plans),
            "input": {
                "columns": ["plan_id", *[f.name for f in STAT_COLUMNS]],
                "optional_columns": {
                    "active": "1 (default) if the plan runs now; 0 keeps its slot but gives it nothing"
                },
                "stat_columns": [{"name": f.name, "meaning": f.meaning, "unit": f.unit} for f in STAT_COLUMNS],
                "channels": list(CHANNELS),
                "verticals": list(VERTICALS),
            },
            "graph": {
                "file": POLICY_FILE,
                "opset": OPSET,
                "inputs": {
                    OBS_INPUT: ["batch", observation_size(sc.max_plans), "float32", "raw observation"],
                    MASK_INPUT: ["batch", sc.max_plans, "float32", "1 = plan may receive budget"],
                },
                "outputs": output,
                "obs_normalisation": None
                if vn is None or not vn.norm_obs
                else {"kind": "VecNormalize", "epsilon": vn.epsilon, "clip_obs": vn.clip_obs},
                "action": "deterministic policy action clipped to [-1, 1]",
            },
            "temperature": sc.temperature,
            "action_limits": limits,
            "compliance_caps": _compliance_caps(run),
            "training": {
                "run_dir": str(run.run_dir.resolve()),
                "model": run.which,
                "scenario": sc.name,
                "days": sc.days,
                "steps_per_day": sc.steps_per_day,
                "daily_budget": sc.daily_budget,
                "n_plans": sc.n_plans,
                "config": run.config,
                "provenance": json.loads(provenance_path.read_text()) if provenance_path.is_file() else None,
            },
            "versions": _library_versions(),
            "policy": {"file": POLICY_FILE, "sha256": sha256_file(policy_path)},
            "parity": parity,
        }
    )


# -------------------------------------------------------------------------------------------------


def _replay_fill(bundle: Bundle, episode: EpisodeRecord, plan_ids: list[str]) -> float:
    """Replay a rank_residual episode through the loader, hour by hour, each call given the previous call's
    state; the largest difference from the fill's shares in training. Raises :class:`ExportError` above
    :data:`PARITY_TOLERANCE`: a bundle whose production replay is not its training fill does not leave."""
    assert episode.steps is not None and episode.fill_shares is not None
    state, worst = None, 0.0
    for t, ((stats, clock, active), trained) in enumerate(zip(episode.steps, episode.fill_shares, strict=True)):
        # decide: the fill's shares before the bundle's action limits, as the wrapper's last_shares are.
        table = bundle.parse(stats_columns(plan_ids, stats, active))
        shares, state = bundle.decide(table, clock, state)
        worst = max(worst, float(np.max(np.abs(shares - trained))))
        if not worst <= PARITY_TOLERANCE:
            raise ExportError(
                f"the bundle's allocation at step {t} of the parity episode differs from the training fill's by "
                f"{worst:.3g} (> {PARITY_TOLERANCE}): the loader's fill does not replay the training env's"
            )
    return worst


def export_bundle(run_dir: Path, out_dir: Path, *, which: str = "final") -> Path:
    """Export the trained policy of ``run_dir`` as a bundle in ``out_dir`` (created); returns ``out_dir``.

    Besides the bundle's files, writes :data:`agents.allocator.DIGEST_FILE`: the bundle digest
    (:func:`agents.allocator.bundle_digest`, SHA-256 over manifest and graph). Copy it into the
    deployment's configuration and load with ``expected_digest=`` (``--expect-digest``): kept beside the
    bundle it proves nothing, since whoever can rewrite the bundle can rewrite it too.

    :param which: ``final`` (``model.zip`` + ``vecnormalize.pkl``) or ``best`` (``best_model.zip`` +
        ``best_vecnormalize.pkl``, the best periodic evaluation).

    :raises ExportError: the run folder is incomplete, or the graph's shares differ from the trained
        model's by more than :data:`PARITY_TOLERANCE` on an episode of the training scenario.
    """
    run = read_run(Path(run_dir), which)
    if run.head.residual and run.head.base != "rank":
        raise ExportError(
            f"{run_dir}: its head tilts {run.head.base} (agent.head.base), whose fill keeps the episode's reporting; "
            "the production loader runs rank's fill only (agent.head.base: rank)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy_path = out_dir / POLICY_FILE
    export_onnx(run, policy_path)

    episode = run_episode(run, seed=0)
    plan_ids = [f"plan{i:03d}" for i in range(run.scenario.n_plans)]
    write_stats_csv(out_dir / EXAMPLE_FILE, plan_ids, episode.example_stats, episode.example_active)
    residual = run.head.residual
    reference = (run.tilt if residual else run.shares)(episode.obs, episode.masks)
    manifest = build_manifest(run, policy_path, parity={})
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))

    bundle = Bundle.load(out_dir)
    exported = (bundle.policy_tilt if residual else bundle.policy_shares)(episode.obs, episode.masks)
    # The tilt multiplies worths: compare it relatively (its ~1e-6 float32 noise scales with it).
    diff = float(np.max(np.abs(exported - reference) / np.maximum(reference, 1.0)))
    what = "tilts (relative)" if residual else "shares"
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(
            f"exported {what} differ from the trained model's by up to {diff:.3g} "
            f"(> {PARITY_TOLERANCE}) over {len(reference)} observations of {run.scenario.name!r}"
        )
    parity = {
        "scenario": run.scenario.name,
        "episode_seed": 0,
        "n_observations": len(reference),
        "max_abs_diff": diff,
        "compared": what,
        "tolerance": PARITY_TOLERANCE,
        "trained_episode_score": episode.score,
    }
    if residual:
        parity["fill_max_abs_diff"] = _replay_fill(bundle, episode, plan_ids)
    clock = episode.example_clock
    example_mask = np.zeros(run.scenario.max_plans, dtype=bool)
    example_mask[: run.scenario.n_plans] = episode.example_active
    manifest["parity"] = parity
    if residual:
        example_tilt = run.tilt(episode.example_obs[None], example_mask[None])[0]
        manifest["example"] = {
            "file": EXAMPLE_FILE,
            "clock": clock,
            "expected_policy_tilt": {pid: float(t) for pid, t in zip(plan_ids, example_tilt, strict=False)},
            "note": "the trained model's tilt for the example; its shares also depend on the state carried "
            "from earlier hours",
        }
    else:
        example_shares = run.shares(episode.example_obs[None], example_mask[None])[0]
        manifest["example"] = {
            "file": EXAMPLE_FILE,
            "clock": clock,
            "expected_policy_shares": {pid: float(s) for pid, s in zip(plan_ids, example_shares, strict=False)},
            "note": "the trained model's shares for the example before action limits and compliance caps",
        }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(_jsonable(manifest), indent=1))
    digest = bundle_digest(out_dir)
    (out_dir / DIGEST_FILE).write_text(digest + "\n")
    # The CSV must parse as the loader's input: fail here, not in production.
    Bundle.load(out_dir, expected_digest=digest).allocate(read_stats_csv(out_dir / EXAMPLE_FILE), Clock(**clock))
    return out_dir
