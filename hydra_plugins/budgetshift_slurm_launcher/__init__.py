"""This project's SLURM launcher for Hydra (``hydra/launcher=submitit_slurm``): see :mod:`.slurm_launcher`.

Hydra instantiates launchers only from the ``hydra_plugins`` namespace package, hence this folder
beside the project's fixed top level.
"""
