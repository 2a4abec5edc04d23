"""budgetshift's simulator: scenarios, Numba kernels, the NumPy reference, features and the env.

Importing this package registers ``BudgetShift-v0``:
``gymnasium.make("BudgetShift-v0", scenario="default")`` gives the single env and
``gymnasium.make_vec("BudgetShift-v0", num_envs=64, vectorization_mode="vector_entry_point",
scenario="default")`` the batched one (:class:`envs.vector_env.BudgetShiftVectorEnv`).
"""

from gymnasium.envs.registration import register, registry

ENV_ID = "BudgetShift-v0"

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="envs.budget_env:BudgetShiftEnv",
        vector_entry_point="envs.vector_env:BudgetShiftVectorEnv",
    )
