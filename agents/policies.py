"""Permutation-invariant ("set") policies over a portfolio's plans, for SB3's PPO, A2C, SAC and TD3.

Budget allocation does not care in which order plans are listed, and a production portfolio rarely
has as many plans as the training one. A flat MLP over the observation learns one weight per plan
slot; these policies instead score every plan with one shared network over

    [that plan's features, a pooled summary of the portfolio, the global features]

where the summary is the masked mean and max over the active plans of a per-plan embedding (a
Deep Sets encoder). The output is one logit per plan, so the same weights serve any number of
plans: the networks read the plan count from the observation's width
(``max_plans * N_PLAN_FEATURES + N_GLOBAL_FEATURES``, :mod:`envs.features`), and padded or not yet
launched plans (``active`` flag 0, plan feature 0) neither enter the summary nor the action's
log-probability or entropy.

- :class:`SetActorCriticPolicy` (PPO, A2C): the logits are the mean of a diagonal Gaussian with one
  shared, state-independent log-std; the critic pools a separate embedding into ``V(s)``.
- :class:`SetSACPolicy`: per plan a mean and a log-std of a tanh-squashed Gaussian; critics
  ``Q(s, a)`` pool an embedding of ``[plan features, plan action]``.
- :class:`SetTD3Policy`: per plan ``tanh(logit)``; critics as for SAC.

Every policy has ``plan_actions(obs)``: the deterministic action in [-1, 1] for an observation of
*any* width, which is what :class:`agents.trained.TrainedAllocator` calls on portfolios wider than
the training one. The networks use plain torch ops only (reshape, linear, masked mean/max via
``where``) and no data-dependent control flow, so they trace to ONNX with a dynamic batch axis.

The observation must reach these networks with the ``active`` flag intact (0/1): use them with
:class:`agents.sb3.PlanPooledRunningMeanStd` normalisation (one set of statistics per feature,
shared by all plans, the flag left unscaled), which :func:`agents.sb3.build_vec_normalize` installs
for ``policy: set``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel, BasePolicy
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, SACPolicy
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from envs.features import N_GLOBAL_FEATURES, N_PLAN_FEATURES, PLAN_FEATURES

ACTIVE = 0  # index of the plan feature `active` (1: the plan exists and runs, 0: padding)
assert PLAN_FEATURES[ACTIVE].name == "active", "the set policies read the plan mask from plan feature 0"

_EPS_TANH = 1e-6  # SB3's epsilon in the log-det of the tanh squashing
_LOG_SIZE = float(np.log1p(100.0))  # the size column of the pooled summary is ~1 at 100 plans
_NEG = -1e9  # a finite stand-in for -inf in the masked max (keeps ONNX graphs free of inf)


def split_observation(obs: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """Flat observations ``(B, P * F + G)`` -> plan rows ``(B, P, F)``, globals ``(B, G)``, mask ``(B, P)``.

    ``P`` is read from the width, so any ``max_plans`` works.
    """
    plans = obs[:, : obs.shape[1] - N_GLOBAL_FEATURES].reshape(obs.shape[0], -1, N_PLAN_FEATURES)
    glob = obs[:, obs.shape[1] - N_GLOBAL_FEATURES :]
    return plans, glob, plans[:, :, ACTIVE] > 0.5


def masked_pool(embedding: th.Tensor, mask: th.Tensor) -> th.Tensor:
    """Mean and max over the plans where ``mask`` holds, and the portfolio's size:
    ``(B, P, E), (B, P) -> (B, 2E + 1)``; zeros if no plan is active.

    Mean and max forget how many plans there are; the last column, ``log1p(active plans) /
    log1p(100)``, keeps it, so a policy trained on portfolios of many sizes can tell a 4-plan
    portfolio from a 96-plan one (a scenario family).
    """
    m = mask.unsqueeze(-1).to(embedding.dtype)
    count = m.sum(dim=1)
    top = th.where(mask.unsqueeze(-1), embedding, th.full_like(embedding, _NEG)).max(dim=1).values
    return _summary((embedding * m).sum(dim=1), top, count)


def _summary(total: th.Tensor, top: th.Tensor, count: th.Tensor) -> th.Tensor:
    """``[mean, max, size]`` from the sum and max over each portfolio's active plans and their count ``(B, 1)``."""
    top = th.where(count > 0, top, th.zeros_like(top))
    return th.cat([total / count.clamp(min=1.0), top, th.log1p(count) / _LOG_SIZE], dim=-1)


def _exporting() -> bool:
    """Whether the module is being traced (ONNX export): a traced graph keeps the padded shapes."""
    return th.jit.is_tracing() or th.onnx.is_in_onnx_export()


def active_rows(plans: th.Tensor, mask: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """The active plans' rows ``(N, F)`` of ``plans`` ``(B, P, F)`` and the batch row each came from ``(N,)``."""
    return plans[mask], mask.nonzero()[:, 0]


def scatter_rows(rows: th.Tensor, mask: th.Tensor) -> th.Tensor:
    """Per-plan values of the active plans ``(N, O)`` back to ``(B, P, O)``, zeros where ``mask`` is False."""
    out = rows.new_zeros(*mask.shape, rows.shape[-1])
    out[mask] = rows
    return out


def pool_rows(embedding: th.Tensor, owner: th.Tensor, mask: th.Tensor) -> th.Tensor:
    """:func:`masked_pool` of the active plans' rows: ``(N, E)`` rows in batch order (as
    :func:`active_rows` gives them), their batch rows ``(N,)`` and the mask ``(B, P)`` -> ``(B, 2E + 1)``.

    The same values (up to float rounding in the mean's sum) and gradients as pooling the rows
    scattered back to the padded width, without the padded tensors: a segment sum (``index_add``) and a
    segment max (``torch.segment_reduce`` over each portfolio's run of rows; its backward costs a
    fraction of ``scatter_reduce(amax)``'s); zeros if no plan is active.
    """
    counts = mask.sum(dim=1)
    total = embedding.new_zeros(mask.shape[0], embedding.shape[-1]).index_add(0, owner, embedding)
    top = th.segment_reduce(embedding, "max", lengths=counts, axis=0, unsafe=True)  # -inf where empty
    return _summary(total, top, counts.unsqueeze(-1).to(embedding.dtype))


def pooled_embedding(net: nn.Module, plans: th.Tensor, mask: th.Tensor) -> th.Tensor:
    """``masked_pool(net(plans), mask)``: the pooled summary ``(B, 2E + 1)`` of ``net`` on the active plans.

    ``net`` runs on the active rows only, pooled by segment (:func:`pool_rows`: a scenario family's
    portfolios fill about a third of the padded width on average, so training's forward and backward
    passes do a third of the work and never touch the padding), except while the module is traced for
    export, where the graph keeps the padded shape (padded rows are computed and masked out of the
    pool). Both give the same summary up to float rounding.
    """
    if _exporting():
        return masked_pool(net(plans), mask)
    rows, owner = active_rows(plans, mask)
    return pool_rows(net(rows), owner, mask)


def mlp(in_dim: int, arch: list[int], activation_fn: type[nn.Module], out_dim: int | None = None) -> nn.Sequential:
    """Linear + activation layers of widths ``arch``, then an optional linear output layer."""
    layers: list[nn.Module] = []
    for width in arch:
        layers += [nn.Linear(in_dim, width), activation_fn()]
        in_dim = width
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def _out_dim(in_dim: int, arch: list[int]) -> int:
    return arch[-1] if arch else in_dim


class PlanScorer(nn.Module):
    """One shared network per plan: ``[x_i, pool_j(phi(x_j)), globals] -> n_outputs`` values for plan i.

    The head's first layer is split into a per-plan part and a portfolio part (``W [x_i; c] = W_x x_i
    + W_c c``) so the portfolio summary ``c`` is multiplied once per portfolio, not once per plan.

    :param embed_arch: hidden widths of the per-plan embedding ``phi`` whose mean/max is the summary.
    :param head_arch: hidden widths of the per-plan head.
    :param n_outputs: values per plan (1: a logit; 2: a mean and a log-std).
    """

    def __init__(
        self, embed_arch: list[int], head_arch: list[int], activation_fn: type[nn.Module], n_outputs: int = 1
    ) -> None:
        super().__init__()
        self.embed = mlp(N_PLAN_FEATURES, embed_arch, activation_fn)
        context_dim = 2 * _out_dim(N_PLAN_FEATURES, embed_arch) + 1 + N_GLOBAL_FEATURES
        first = head_arch[0] if head_arch else n_outputs
        self.plan_in = nn.Linear(N_PLAN_FEATURES, first)
        self.context_in = nn.Linear(context_dim, first, bias=False)
        rest = [activation_fn(), *mlp(first, head_arch[1:], activation_fn, n_outputs)] if head_arch else []
        self.head = nn.Sequential(*rest)

    def output_layer(self) -> nn.Linear:
        """The last linear layer (SB3 initialises a policy's output layer with a small gain)."""
        return self.head[-1] if len(self.head) else self.plan_in

    def forward(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """``(B, width) -> (scores (B, P, n_outputs), mask (B, P))``; scores of masked plans are 0."""
        plans, glob, mask = split_observation(obs)
        if _exporting():  # the padded graph (see pooled_embedding)
            context = self.context_in(th.cat([masked_pool(self.embed(plans), mask), glob], dim=-1))
            scores = self.head(self.plan_in(plans) + context.unsqueeze(1))
            return th.where(mask.unsqueeze(-1), scores, th.zeros_like(scores)), mask
        rows, owner = active_rows(plans, mask)  # only the active plans (see pooled_embedding)
        context = self.context_in(th.cat([pool_rows(self.embed(rows), owner, mask), glob], dim=-1))
        return scatter_rows(self.head(self.plan_in(rows) + context[owner]), mask), mask


class PooledValue(nn.Module):
    """A portfolio-level summary: ``[pool_j(phi([x_j, a_j])), globals] -> latent``; optionally with actions."""

    def __init__(
        self,
        embed_arch: list[int],
        arch: list[int],
        activation_fn: type[nn.Module],
        with_actions: bool = False,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        plan_in = N_PLAN_FEATURES + int(with_actions)
        self.embed = mlp(plan_in, embed_arch, activation_fn)
        in_dim = 2 * _out_dim(plan_in, embed_arch) + 1 + N_GLOBAL_FEATURES
        self.net = mlp(in_dim, arch, activation_fn, out_dim)
        self.latent_dim = out_dim if out_dim is not None else _out_dim(in_dim, arch)

    def forward(self, obs: th.Tensor, actions: th.Tensor | None = None) -> th.Tensor:
        plans, glob, mask = split_observation(obs)
        if actions is not None:
            plans = th.cat([plans, actions.unsqueeze(-1)], dim=-1)
        return self.net(th.cat([pooled_embedding(self.embed, plans, mask), glob], dim=-1))


def _arch(net_arch: list[int] | dict[str, list[int]] | None, key: str, default: list[int]) -> list[int]:
    if net_arch is None:
        return list(default)
    if isinstance(net_arch, dict):
        return list(net_arch.get(key, default))
    return list(net_arch)


# -------------------------------------------------------------------------------------------------
# PPO / A2C
# -------------------------------------------------------------------------------------------------


class MaskedDiagGaussian(DiagGaussianDistribution):
    """A diagonal Gaussian whose log-probability and entropy count only the active plans.

    :param logprob_plans: None: the exact log-probability (a sum over the active plans). A number
        ``R``: the sum times ``R / active plans``, i.e. as if every portfolio had ``R`` plans. PPO's
        ratio is the exponential of a log-probability difference, so with the exact sum a 96-plan
        portfolio's ratio moves four times as fast as a 24-plan one's and is clipped after a quarter of
        the step; training on portfolios of many sizes (a scenario family) evens the step this way.
        Equal to the exact sum on portfolios of ``R`` plans.
    """

    mask: th.Tensor

    def __init__(self, action_dim: int, logprob_plans: float | None = None) -> None:
        super().__init__(action_dim)
        self.logprob_plans = logprob_plans

    def proba_distribution(
        self,
        mean_actions: th.Tensor,
        log_std: th.Tensor,  # type: ignore[override]
        mask: th.Tensor,
    ) -> MaskedDiagGaussian:
        super().proba_distribution(mean_actions, log_std)
        self.mask = mask.to(mean_actions.dtype)
        return self

    def _over_plans(self, per_plan: th.Tensor) -> th.Tensor:
        total = (per_plan * self.mask).sum(dim=-1)
        if self.logprob_plans is None:
            return total
        return total * (self.logprob_plans / self.mask.sum(dim=-1).clamp(min=1.0))

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        return self._over_plans(self.distribution.log_prob(actions))

    def entropy(self) -> th.Tensor:
        return self._over_plans(self.distribution.entropy())


class SetActorCriticExtractor(nn.Module):
    """SB3's ``mlp_extractor`` slot: the actor's latent is ``[logits (P), mask (P)]``, the critic's a pooled summary."""

    def __init__(
        self,
        embed_arch: list[int],
        pi_arch: list[int],
        vf_arch: list[int],
        activation_fn: type[nn.Module],
        max_plans: int,
    ) -> None:
        super().__init__()
        self.actor = PlanScorer(embed_arch, pi_arch, activation_fn, n_outputs=1)
        self.critic = PooledValue(embed_arch, vf_arch, activation_fn)
        self.latent_dim_pi = 2 * max_plans  # at the training width; the networks accept any width
        self.latent_dim_vf = self.critic.latent_dim

    def forward(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: th.Tensor) -> th.Tensor:
        scores, mask = self.actor(features)
        return th.cat([scores.squeeze(-1), mask.to(scores.dtype)], dim=-1)

    def forward_critic(self, features: th.Tensor) -> th.Tensor:
        return self.critic(features)


class SetActorCriticPolicy(ActorCriticPolicy):
    """PPO/A2C policy: a shared per-plan scorer gives the Gaussian's mean; one log-std for every plan.

    ``net_arch``: ``dict(pi=[...], vf=[...])`` hidden widths of the per-plan head and of the critic
    after pooling (a list sets both); ``embed_arch``: hidden widths of the per-plan embeddings (the
    actor and the critic each have their own). ``log_std_init`` sets the shared log-std.
    ``logprob_plans``: see :class:`MaskedDiagGaussian` (None: the exact log-probability).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Any,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        *,
        embed_arch: list[int] | None = None,
        logprob_plans: float | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("use_sde"):
            raise ValueError("use_sde must be false for policy: set (the set policy has one shared log-std)")
        if logprob_plans is not None and not logprob_plans > 0:
            raise ValueError(f"logprob_plans must be a positive number of plans or null, got {logprob_plans!r}")
        self.embed_arch = list(embed_arch) if embed_arch is not None else [64, 64]
        self.logprob_plans = logprob_plans
        super().__init__(observation_space, action_space, lr_schedule, net_arch=net_arch, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = SetActorCriticExtractor(
            self.embed_arch,
            _arch(self.net_arch, "pi", [64, 64]),
            _arch(self.net_arch, "vf", [64]),
            self.activation_fn,
            max_plans=get_action_dim(self.action_space),
        )

    def _build(self, lr_schedule: Any) -> None:
        self._build_mlp_extractor()
        self.action_dist = MaskedDiagGaussian(get_action_dim(self.action_space), self.logprob_plans)
        self.action_net = nn.Identity()  # the extractor already outputs the mean; kept for SB3's attribute
        self.log_std = nn.Parameter(th.full((1,), float(self.log_std_init)))
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            self.mlp_extractor.apply(lambda m: self.init_weights(m, gain=2**0.5))
            # Small initial logits: start near uniform shares, as SB3 does with its action_net.
            self.mlp_extractor.actor.output_layer().apply(lambda m: self.init_weights(m, gain=0.01))
            self.value_net.apply(lambda m: self.init_weights(m, gain=1.0))
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> MaskedDiagGaussian:
        n = latent_pi.shape[-1] // 2
        return self.action_dist.proba_distribution(latent_pi[:, :n], self.log_std, latent_pi[:, n:] > 0.5)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["embed_arch"] = self.embed_arch
        data["logprob_plans"] = self.logprob_plans
        return data

    def plan_actions(self, obs: th.Tensor) -> th.Tensor:
        """Deterministic action ``(B, P)`` in [-1, 1] for (normalised) observations of any width."""
        scores, _ = self.mlp_extractor.actor(obs.float())
        return scores.squeeze(-1).clamp(-1.0, 1.0)


# -------------------------------------------------------------------------------------------------
# SAC / TD3
# -------------------------------------------------------------------------------------------------


class _SetActor(BasePolicy):
    """The shared part of the SAC and TD3 actors: a :class:`PlanScorer` with ``n_outputs`` per plan."""

    n_outputs = 1

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: nn.Module,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        embed_arch: list[int] | None = None,
        normalize_images: bool = True,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
            squash_output=True,
        )
        self.net_arch = net_arch
        self.embed_arch = list(embed_arch) if embed_arch is not None else [64, 64]
        self.features_dim = features_dim
        self.activation_fn = activation_fn
        self.scorer = PlanScorer(self.embed_arch, net_arch, activation_fn, n_outputs=self.n_outputs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            net_arch=self.net_arch,
            embed_arch=self.embed_arch,
            features_dim=self.features_dim,
            activation_fn=self.activation_fn,
            features_extractor=self.features_extractor,
        )
        return data


class SetSACActor(_SetActor):
    """SAC actor: per plan a mean and a log-std of a tanh-squashed Gaussian, masked in the log-probability."""

    n_outputs = 2

    def __init__(self, *args: Any, use_sde: bool = False, **kwargs: Any) -> None:
        if use_sde:
            raise ValueError("use_sde must be false for policy: set")
        for sde_key in ("log_std_init", "full_std", "use_expln", "clip_mean"):  # SB3's gSDE options: unused
            kwargs.pop(sde_key, None)
        super().__init__(*args, **kwargs)

    def get_action_dist_params(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """``(mean (B, P), log_std (B, P), mask (B, P))`` of the pre-squash Gaussian."""
        scores, mask = self.scorer(self.extract_features(obs, self.features_extractor))
        return scores[..., 0], scores[..., 1].clamp(LOG_STD_MIN, LOG_STD_MAX), mask

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        mean, log_std, _ = self.get_action_dist_params(obs)
        if deterministic:
            return th.tanh(mean)
        return th.tanh(mean + log_std.exp() * th.randn_like(mean))

    def action_log_prob(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        mean, log_std, mask = self.get_action_dist_params(obs)
        gaussian = th.distributions.Normal(mean, log_std.exp())
        pre_squash = gaussian.rsample()
        actions = th.tanh(pre_squash)
        log_prob = gaussian.log_prob(pre_squash) - th.log(1.0 - actions**2 + _EPS_TANH)
        return actions, (log_prob * mask.to(log_prob.dtype)).sum(dim=-1)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self(observation, deterministic)


class SetTD3Actor(_SetActor):
    """TD3 actor: ``tanh`` of a shared per-plan score (0 for masked plans)."""

    def forward(self, obs: th.Tensor) -> th.Tensor:
        scores, _ = self.scorer(self.extract_features(obs, self.features_extractor))
        return th.tanh(scores.squeeze(-1))

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self(observation)


class SetContinuousCritic(BaseModel):
    """``n_critics`` set critics ``Q(s, a)``: pooled embeddings of ``[plan features, plan action]`` + globals."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: nn.Module,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        embed_arch: list[int] | None = None,
        normalize_images: bool = True,
        n_critics: int = 2,
        share_features_extractor: bool = True,
    ) -> None:
        super().__init__(
            observation_space, action_space, features_extractor=features_extractor, normalize_images=normalize_images
        )
        self.share_features_extractor = share_features_extractor
        self.n_critics = n_critics
        embed_arch = list(embed_arch) if embed_arch is not None else [64, 64]
        self.q_networks: list[nn.Module] = []
        for idx in range(n_critics):
            q_net = PooledValue(embed_arch, net_arch, activation_fn, with_actions=True, out_dim=1)
            self.add_module(f"qf{idx}", q_net)
            self.q_networks.append(q_net)

    def forward(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, ...]:
        # The features extractor is a flatten (no parameters), so sharing it changes nothing here.
        features = self.extract_features(obs, self.features_extractor)
        return tuple(q_net(features, actions) for q_net in self.q_networks)

    def q1_forward(self, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
        return self.q_networks[0](self.extract_features(obs, self.features_extractor), actions)


class _SetOffPolicyMixin:
    """Shared by the SAC and TD3 set policies: build set actors/critics instead of flat MLPs."""

    actor_class: type[BasePolicy]
    embed_arch: list[int]

    def make_actor(self, features_extractor: Any = None) -> BasePolicy:
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return self.actor_class(embed_arch=self.embed_arch, **kwargs).to(self.device)

    def make_critic(self, features_extractor: Any = None) -> SetContinuousCritic:
        kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return SetContinuousCritic(embed_arch=self.embed_arch, **kwargs).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data["embed_arch"] = self.embed_arch
        return data


class SetSACPolicy(_SetOffPolicyMixin, SACPolicy):
    """SAC with set actor and critics. ``net_arch``: ``dict(pi=[...], qf=[...])``; ``embed_arch``: embeddings."""

    actor_class = SetSACActor

    def __init__(self, *args: Any, embed_arch: list[int] | None = None, **kwargs: Any) -> None:
        self.embed_arch = list(embed_arch) if embed_arch is not None else [64, 64]
        super().__init__(*args, **kwargs)

    def plan_actions(self, obs: th.Tensor) -> th.Tensor:
        """Deterministic action ``(B, P)`` in [-1, 1] for (normalised) observations of any width."""
        return self.actor(obs.float(), deterministic=True)


class SetTD3Policy(_SetOffPolicyMixin, TD3Policy):
    """TD3 with set actor and critics. ``net_arch``: ``dict(pi=[...], qf=[...])``; ``embed_arch``: embeddings."""

    actor_class = SetTD3Actor

    def __init__(self, *args: Any, embed_arch: list[int] | None = None, **kwargs: Any) -> None:
        self.embed_arch = list(embed_arch) if embed_arch is not None else [64, 64]
        super().__init__(*args, **kwargs)

    def plan_actions(self, obs: th.Tensor) -> th.Tensor:
        """Deterministic action ``(B, P)`` in [-1, 1] for (normalised) observations of any width."""
        return self.actor(obs.float())


SET_POLICIES: dict[str, type[BasePolicy]] = {
    "PPO": SetActorCriticPolicy,
    "A2C": SetActorCriticPolicy,
    "SAC": SetSACPolicy,
    "TD3": SetTD3Policy,
}
