"""budgetshift's simulator: scenarios, Numba kernels, the NumPy reference, features and the env.

Importing this package registers ``BudgetShift-v0``:
``gymnasium.make("BudgetShift-v0", scenario="default")``.
"""

from gymnasium.envs.registration import register, registry

ENV_ID = "BudgetShift-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="envs.budget_env:BudgetShiftEnv")
