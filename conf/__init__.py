"""budgetshift's Hydra configs, shipped as package data so an installed wheel works without the source tree.

``conf/env/*.yaml`` are the scenario presets (``gym.make("BudgetShift-v0", scenario="default")`` reads
them through :data:`CONF_DIR`) and Hydra's ``env`` group; ``agent/``, ``experiment/``, ``tune/`` and
``hydra/launcher/`` are the other groups; ``config.yaml``, ``train.yaml`` and ``tune.yaml`` the entry
points' primary configs. The entry points declare ``config_path="../conf"``, which Hydra resolves
to the package ``pkg://conf``: the same files from a checkout, an editable install or a wheel.
"""

from importlib.resources import files
from pathlib import Path

#: The folder holding the config files (a real directory: setuptools installs package data unzipped).
CONF_DIR = Path(str(files(__name__)))
