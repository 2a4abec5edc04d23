"""budgetshift's simulator: scenarios, Numba kernels, the NumPy reference, features and the env.

Importing this package registers ``BudgetShift-v0``:
``gymnasium.make("BudgetShift-v0", scenario="default")`` gives the single env and
``gymnasium.make_vec("BudgetShift-v0", num_envs=64, vectorization_mode="vector_entry_point",
scenario="default")`` the batched one (:class:`envs.vector_env.BudgetShiftVectorEnv`).

Modules, in the order data flows through them (none imports ``agents``, ``experiments`` or a
learning library):

- ``scenario``: the scenario spec, the channel and vertical catalogues, loading presets, and the
  generator that draws an episode's hidden truth (:class:`~envs.scenario.Portfolio`);
- ``simulation``: the state of a batch of episodes (:class:`~envs.simulation.PortfolioBatch`);
- ``kernels`` + ``reference``: one step's dynamics in Numba, and the NumPy oracle it is tested against;
- ``features``: reporting stats -> observation (also the production allocator's input);
- ``shares``: actions -> shares -> step budgets: softmax, share limits, compliance caps, pacing;
- ``objective``: the reward and the end-of-episode settlement;
- ``budget_env``: the ``gymnasium.Env``; ``vector_env``: the native batched ``VectorEnv``;
- ``jit``: compiling the kernels once per machine.

It also defaults ``OMP_WAIT_POLICY`` to ``PASSIVE`` (unless set): OpenMP threads that spin while
idle (libgomp's default) steal the CPU from each other on small machines, both between the batched
kernel's ``prange`` regions and between Numba's and torch's thread pools during training. On the
project's 2-core machines, with other jobs running, it made PPO on the batched env 5x faster and the
batched kernel's 2-thread calls up to 30x faster (``experiments/bench.py``). OpenMP reads it when
the runtime loads, so import ``envs`` before ``torch`` (or export the variable) for it to reach
torch's pool as well.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from gymnasium.envs.registration import register, registry  # noqa: E402

ENV_ID = "BudgetShift-v0"

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="envs.budget_env:BudgetShiftEnv",
        vector_entry_point="envs.vector_env:BudgetShiftVectorEnv",
    )
