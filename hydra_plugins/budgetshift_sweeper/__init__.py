"""This project's sweeper for Hydra (``hydra/sweeper=budgetshift``, the evaluation sweeps' default): see
:mod:`.covering_sweeper`.

Hydra instantiates sweepers only from the ``hydra_plugins`` namespace package, hence this folder
beside the project's fixed top level.
"""
