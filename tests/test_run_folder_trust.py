"""Loading a run folder never unpickles it and refuses files that are not as training left them.

The attacks are the ones issue 15 found: a crafted ``vecnormalize.pkl`` and a crafted cloudpickled field
in ``model.zip``, both of which used to run their code on ``agent=trained agent.run=...`` and on
``experiments.export run=...``. The manifest check is also shown for what it is: it catches a changed
or missing file, and an attacker who rewrites the manifest as well still gets no code run by the loader.
"""

from __future__ import annotations

import base64
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from bundle_runs import make_run, make_vecnormalize, observations
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.export import ExportError, export_bundle
from agents.sb3 import RunFolderError, load_vec_normalize, save_vec_normalize, write_run_manifest
from agents.trained import TrainedAllocator
from envs.budget_env import BudgetShiftEnv
from experiments import export


class Payload:
    """Unpickling this writes ``marker``: proof that a loader ran the file's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path, "ppo", "mlp", "small")


def test_a_pickled_vecnormalize_is_refused_unread(run, tmp_path):
    marker = tmp_path / "ran"
    (run / "vecnormalize.npz").unlink()
    (run / "vecnormalize.pkl").write_bytes(pickle.dumps(Payload(marker)))
    write_run_manifest(run)
    with pytest.raises(RunFolderError, match=r"vecnormalize\.pkl is a pickled VecNormalize.*re-train"):
        TrainedAllocator(run)
    with pytest.raises(ExportError, match=r"vecnormalize\.pkl is a pickled VecNormalize"):
        export_bundle(run, tmp_path / "bundle")
    assert export.main([f"run={run}", f"out={tmp_path / 'bundle'}"]) == 1
    assert not marker.exists(), "loading the run folder ran the pickle's code"


def test_a_pickled_field_of_model_zip_is_never_unpickled(run, tmp_path):
    """Even with the manifest rewritten to match (what it cannot detect), no field of model.zip is unpickled."""
    marker = tmp_path / "ran"
    model_zip = run / "model.zip"
    with zipfile.ZipFile(model_zip) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(entries["data"])
    serialized = [key for key, value in data.items() if isinstance(value, dict) and ":serialized:" in value]
    assert {"policy_class", "lr_schedule", "observation_space"} <= set(serialized)
    for key in serialized:
        data[key][":serialized:"] = base64.b64encode(pickle.dumps(Payload(marker))).decode()
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(model_zip, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    write_run_manifest(run)
    allocator = TrainedAllocator(run)
    export_bundle(run, tmp_path / "bundle")
    assert not marker.exists(), "loading model.zip ran a cloudpickled field's code"
    env = BudgetShiftEnv("small")
    env.reset(seed=0)
    shares = allocator.allocate(env.reporting_stats(), env.clock(), env.active_mask())
    assert shares.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["model.zip", "vecnormalize.npz", "config.yaml"])
def test_a_modified_or_missing_file_is_refused_by_name(run, tmp_path, name):
    path = run / name
    original = path.read_bytes()
    path.write_bytes(original + b"\n")
    with pytest.raises(RunFolderError, match=rf"{name} was modified since training ended"):
        TrainedAllocator(run)
    with pytest.raises(ExportError, match=rf"{name} was modified since training ended"):
        export_bundle(run, tmp_path / "bundle")
    if name != "model.zip":  # export names a missing model.zip before it looks at the manifest
        path.unlink()
        with pytest.raises(ExportError, match=rf"{name} is missing"):
            export_bundle(run, tmp_path / "bundle")
    path.write_bytes(original)
    TrainedAllocator(run)


def test_a_run_without_manifest_is_refused(run):
    (run / "run_manifest.json").unlink()
    with pytest.raises(RunFolderError, match="run_manifest.json is missing.*did not finish"):
        TrainedAllocator(run)


@pytest.mark.parametrize("policy", ["mlp", "set"])
def test_vecnormalize_statistics_round_trip_without_pickle(tmp_path, policy):
    obs, _ = observations("small", 500, seed=99)
    original = make_vecnormalize("small", policy, obs, np.random.default_rng(0))
    original.ret_rms.update(np.array([1.0, -2.0, 3.5]))
    path = tmp_path / "stats.npz"
    save_vec_normalize(original, path)
    assert not path.read_bytes().startswith(b"\x80")
    loaded = load_vec_normalize(path, DummyVecEnv([lambda: BudgetShiftEnv("small")]))
    assert type(loaded.obs_rms) is type(original.obs_rms)
    np.testing.assert_array_equal(loaded.normalize_obs(obs), original.normalize_obs(obs))
    for name in ("norm_obs", "norm_reward", "clip_obs", "clip_reward", "gamma", "epsilon"):
        assert getattr(loaded, name) == getattr(original, name), name
    for field in ("mean", "var", "count"):
        np.testing.assert_array_equal(getattr(loaded.ret_rms, field), getattr(original.ret_rms, field))
        np.testing.assert_array_equal(getattr(loaded.obs_rms, field), getattr(original.obs_rms, field))
    assert not loaded.training
