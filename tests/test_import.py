"""`tinypolicy import`: policies trained elsewhere become checkpoints that act exactly as the
source does (SB3's predict(deterministic=True), the source module, ONNX Runtime), within
1e-5 on 10,000 observations, and that evaluate and export accept.

The SB3 models are trained here for a few hundred steps on Pendulum-v1 (parity needs
trained, not good, weights); the state dicts are CleanRL's actor layouts, the ONNX actors
graphs of the shapes robot-learning frameworks export.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests.foreign_files import sb3_zip
from tinypolicy.checkpoint import load_checkpoint
from tinypolicy.ondevice.errors import UserError
from tinypolicy.ondevice.onnx_mlp import policy_onnx
from tinypolicy.pipeline.cli import main
from tinypolicy.pipeline.import_policy import import_policy
from tinypolicy.pipeline.settings import ImportConfig

ENV = "Pendulum-v1"
LOW, HIGH = np.array([-1.0, -1.0, -8.0]), np.array([1.0, 1.0, 8.0])  # its observation box
ACTION_HIGH = 2.0
PARITY = 1e-5
N_OBS = 10_000


def observations(n: int = N_OBS, widen: float = 1.5, seed: int = 0) -> np.ndarray:
    """Uniform over Pendulum's observation box widened by half its size each way: visited
    states and ones beyond them."""
    return np.random.default_rng(seed).uniform(LOW * widen, HIGH * widen, size=(n, 3)).astype(np.float32)


def imported_actions(checkpoint: str | Path, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return load_checkpoint(checkpoint).build_actor()(torch.from_numpy(obs)).numpy()


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# ----------------------------------------------------------------------------- Stable-Baselines3

OFF_POLICY = {"learning_starts": 100, "train_freq": 1, "batch_size": 32}
SB3_ALGOS = {"TD3": OFF_POLICY, "DDPG": OFF_POLICY, "SAC": OFF_POLICY,
             "PPO": {"n_steps": 128, "batch_size": 32, "n_epochs": 2}, "A2C": {"n_steps": 8}}


@pytest.fixture(scope="module")
def sb3_models(tmp_path_factory) -> dict[str, tuple[object, Path]]:
    """Each algorithm trained for 300 steps with 32x32 networks, saved as SB3 saves it."""
    sb3 = pytest.importorskip("stable_baselines3")  # a dev dependency
    root = tmp_path_factory.mktemp("sb3")
    models = {}
    for name, kwargs in SB3_ALGOS.items():
        on_policy = name in ("PPO", "A2C")
        arch = {"pi": [32, 32], "vf": [32]} if on_policy else [32, 32]
        model = getattr(sb3, name)("MlpPolicy", ENV, policy_kwargs={"net_arch": arch}, seed=0, device="cpu",
                                   **kwargs)
        model.learn(300)
        if on_policy:
            # A few hundred steps leave the Gaussian mean well inside the bounds; with larger
            # weights it leaves them often, so the clip SB3's predict applies is exercised too.
            with torch.no_grad():
                model.policy.action_net.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
        path = root / f"{name}.zip"
        model.save(path)
        models[name] = model, path
    return models


@pytest.mark.parametrize("algo", SB3_ALGOS)
def test_sb3_import_acts_as_predict(algo, sb3_models, tmp_path):
    model, path = sb3_models[algo]
    summary = import_policy(path, ENV, tmp_path / "imported")
    obs = observations()
    expected = model.predict(obs, deterministic=True)[0]
    difference = max_difference(imported_actions(summary["checkpoint"], obs), expected)
    print(f"{algo}: max |action difference| {difference:.2e} on {len(obs)} observations")
    assert difference <= PARITY
    ckpt = load_checkpoint(summary["checkpoint"])
    assert ckpt.data["source"]["algo"] == algo
    if algo in ("PPO", "A2C"):
        assert "critic" not in ckpt.data and summary["activation"] == "tanh" and summary["output"] == "clip"
        clipped = np.isclose(np.abs(expected), ACTION_HIGH).mean()
        assert 0.1 < clipped < 0.9, clipped  # both sides of the clip are compared
    else:
        assert {"critic", "critic_target"} <= set(ckpt.data) and summary["activation"] == "relu"
        assert ("actor_target" in ckpt.data) == (algo != "SAC")


@pytest.mark.parametrize("algo", ["TD3", "DDPG", "SAC"])
def test_sb3_critics_are_carried(algo, sb3_models, tmp_path):
    """Our twin critic gives SB3's Q values (DDPG's single head in both of ours)."""
    model, path = sb3_models[algo]
    critic = load_checkpoint(import_policy(path, ENV, tmp_path / "imported")["checkpoint"]).build_critic()
    obs = torch.from_numpy(observations(1000))
    action = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (1000, 1)).astype(np.float32))
    with torch.no_grad():
        ours = critic(obs, action).numpy()
        theirs = np.stack([q.squeeze(-1).numpy() for q in model.critic(obs, action)])
    assert max_difference(ours, np.broadcast_to(theirs, ours.shape)) <= PARITY
    assert (max_difference(ours[0], ours[1]) == 0) == (algo == "DDPG")


def test_sb3_with_vecnormalize_statistics(sb3_models, tmp_path):
    """VecNormalize's statistics, given as an .npz, are applied as SB3 applies them before predict."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env(ENV, n_envs=1, seed=0))
    venv.reset()
    for _ in range(200):
        venv.step(np.random.default_rng(0).uniform(-2, 2, (1, 1)).astype(np.float32))
    np.savez(tmp_path / "obs_stats.npz", mean=venv.obs_rms.mean, var=venv.obs_rms.var, clip_obs=venv.clip_obs)
    model, path = sb3_models["TD3"]
    obs = observations(widen=1.0)
    assert np.abs(venv.normalize_obs(obs)).max() < venv.clip_obs  # VecNormalize's clip is not represented
    cfg = ImportConfig(obs_stats=str(tmp_path / "obs_stats.npz"))
    summary = import_policy(path, ENV, tmp_path / "imported", cfg)
    expected = model.predict(venv.normalize_obs(obs), deterministic=True)[0]
    difference = max_difference(imported_actions(summary["checkpoint"], obs), expected)
    print(f"TD3 + VecNormalize: max |action difference| {difference:.2e}")
    assert summary["obs_norm"] and difference <= PARITY
    assert any("clips normalised observations at +-10" in note for note in summary["notes"])
    unnormalised = model.predict(obs, deterministic=True)[0]
    assert max_difference(imported_actions(summary["checkpoint"], obs), unnormalised) > 1e-3  # it matters

    # The critic takes raw observations too: the statistics are folded into its first layer.
    critic = load_checkpoint(summary["checkpoint"]).build_critic()
    action = torch.zeros(len(obs), 1)
    with torch.no_grad():
        ours = critic(torch.from_numpy(obs), action).numpy()
        theirs = model.critic(torch.from_numpy(venv.normalize_obs(obs)), action)[0].squeeze(-1).numpy()
    assert max_difference(ours[0], theirs) <= 1e-4


# ----------------------------------------------------------------------------- CleanRL state dicts

class CleanRLTD3Actor(nn.Module):
    """CleanRL td3_continuous_action.py's Actor."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc_mu = nn.Linear(3, 64), nn.Linear(64, 64), nn.Linear(64, 1)
        self.register_buffer("action_scale", torch.tensor([ACTION_HIGH]))
        self.register_buffer("action_bias", torch.tensor([0.0]))

    def forward(self, x):
        x = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return torch.tanh(self.fc_mu(x)) * self.action_scale + self.action_bias


class CleanRLSACActor(CleanRLTD3Actor):
    """CleanRL sac_continuous_action.py's Actor: deterministic action tanh(mean), scaled."""

    def __init__(self):
        super().__init__()
        self.fc_logstd = nn.Linear(64, 1)

    def forward(self, x):
        return super().forward(x)  # fc_mu plays fc_mean; the log-std head does not move the mean


class CleanRLPPOAgent(nn.Module):
    """CleanRL ppo_continuous_action.py's Agent: the mean, clipped to the bounds by the env's
    ClipAction wrapper."""

    def __init__(self):
        super().__init__()
        self.critic = nn.Sequential(nn.Linear(3, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
        self.actor_mean = nn.Sequential(nn.Linear(3, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
        self.actor_logstd = nn.Parameter(torch.zeros(1, 1))
        with torch.no_grad():
            self.actor_mean[4].weight.mul_(30.0)  # the mean leaves the bounds: the clip matters

    def forward(self, x):
        return torch.clamp(self.actor_mean(x), -ACTION_HIGH, ACTION_HIGH)


def test_sb3_reference_ppo_teacher_imports(tmp_path):
    """The PPO teacher `benchmarks.sb3_reference --algo ppo` trains (VecNormalize'd, as the RL Zoo
    does) imports with the obs_stats.npz it saves and acts as SB3 acts on normalised states."""
    from stable_baselines3 import PPO

    from benchmarks.sb3_reference import main as sb3_reference
    from tinypolicy.envs import rollout

    env_id = "InvertedPendulum-v5"
    run = tmp_path / "ppo"
    assert sb3_reference(["--env", env_id, "--algo", "ppo", "--steps", "1024", "--eval-interval", "1024",
                          "--eval-episodes", "1", "--out", str(run)]) == 0
    record = json.loads((run / "eval.json").read_text())
    assert record["algo"] == "ppo" and record["best"]["step"] == 1024  # the only evaluation
    assert (run / "best_model.zip").is_file() and (run / "best_obs_stats.npz").is_file()
    summary = import_policy(run / "model.zip", env_id, tmp_path / "imported",
                            ImportConfig(obs_stats=str(run / "obs_stats.npz")))
    obs = np.stack([step.obs for step in rollout(env_id, None, seed=0, episodes=20)]).astype(np.float32)
    with np.load(run / "obs_stats.npz", allow_pickle=False) as stats:
        normalised = ((obs - stats["mean"]) / np.sqrt(stats["var"] + stats["epsilon"])).astype(np.float32)
        unclipped = np.all(np.abs(normalised) < stats["clip_obs"], axis=1)  # the note's domain of equality
    assert unclipped.mean() > 0.5
    expected = PPO.load(run / "model.zip", device="cpu").predict(normalised[unclipped], deterministic=True)[0]
    assert max_difference(imported_actions(summary["checkpoint"], obs[unclipped]), expected) <= PARITY



@pytest.mark.parametrize("cls", [CleanRLTD3Actor, CleanRLSACActor, CleanRLPPOAgent])
def test_state_dict_import_acts_as_the_module(cls, tmp_path):
    torch.manual_seed(0)
    module = cls().eval()
    if cls is CleanRLSACActor:  # CleanRL's own names
        state = {k.replace("fc_mu", "fc_mean"): v for k, v in module.state_dict().items()}
    else:
        state = module.state_dict()
    # CleanRL's TD3 saves (actor, qf1, qf2); the actor comes first.
    torch.save((state, {"fc1.weight": torch.zeros(64, 4)}) if cls is CleanRLTD3Actor else state, tmp_path / "model.pt")
    summary = import_policy(tmp_path / "model.pt", ENV, tmp_path / "imported")
    obs = observations()
    with torch.no_grad():
        expected = module(torch.from_numpy(obs)).numpy()
    difference = max_difference(imported_actions(summary["checkpoint"], obs), expected)
    print(f"{cls.__name__}: max |action difference| {difference:.2e}")
    assert difference <= PARITY
    assert summary["critic"] is None and summary["hidden"] == [64, 64]
    assert summary["activation"] == ("tanh" if cls is CleanRLPPOAgent else "relu")
    assert load_checkpoint(summary["checkpoint"]).config["algo"] == ("sac" if cls is CleanRLSACActor else "td3")


def test_state_dict_activation_flag(tmp_path):
    """The activation cannot be read from tensors: the flag decides, and it matters."""
    torch.manual_seed(0)
    module = CleanRLTD3Actor().eval()
    torch.save(module.state_dict(), tmp_path / "actor.pt")
    obs = observations(1000)
    with torch.no_grad():
        expected = module(torch.from_numpy(obs)).numpy()
    wrong = import_policy(tmp_path / "actor.pt", ENV, tmp_path / "tanh", ImportConfig(activation="tanh"))
    assert max_difference(imported_actions(wrong["checkpoint"], obs), expected) > 1e-2


# ----------------------------------------------------------------------------- ONNX

def _matmul_graph(tmp_path: Path, rng: np.random.Generator) -> Path:
    """MatMul + Add layers with Relu, observation normalisation as Sub then Mul, a Clip to
    [-1, 1] scaled to the bounds by Mul, and a value head as a second output (ignored)."""
    w = [rng.normal(0, s, size).astype(np.float32) for s, size in ((0.8, (3, 32)), (0.3, (32, 32)), (0.5, (32, 1)))]
    b = [rng.normal(0, 0.1, n).astype(np.float32) for n in (32, 32, 1)]
    inits = [numpy_helper.from_array(a, n) for a, n in [*zip(w, ["w0", "w1", "w2"]), *zip(b, ["b0", "b1", "b2"]),
                                                          (np.array([0.1, -0.2, 0.5], np.float32), "mean"),
                                                          (np.array([1.5, 1.2, 0.25], np.float32), "inv_std"),
                                                          (np.float32(-1), "lo"), (np.float32(1), "hi"),
                                                          (np.array([ACTION_HIGH], np.float32), "scale"),
                                                          (rng.normal(size=(32, 1)).astype(np.float32), "wv")]]
    nodes = [helper.make_node("Sub", ["obs", "mean"], ["c"]), helper.make_node("Mul", ["c", "inv_std"], ["n"])]
    x = "n"
    for k in range(3):
        nodes += [helper.make_node("MatMul", [x, f"w{k}"], [f"m{k}"]), helper.make_node("Add", [f"m{k}", f"b{k}"],
                                                                                         [f"z{k}"])]
        x = f"z{k}"
        if k < 2:
            nodes.append(helper.make_node("Relu", [x], [f"h{k}"]))
            x = f"h{k}"
    nodes += [helper.make_node("Clip", [x, "lo", "hi"], ["clipped"]),
              helper.make_node("Mul", ["clipped", "scale"], ["action"]),
              helper.make_node("MatMul", ["h1", "wv"], ["value"])]
    graph = helper.make_graph(nodes, "actor", [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["N", 1]),
                               helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 1])], inits)
    path = tmp_path / "matmul.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _gemm_graph(tmp_path: Path, rng: np.random.Generator) -> Path:
    """tinypolicy's own ONNX writer: Sub/Div normalisation, Gemm layers with Tanh, tanh output
    scaled by Mul/Add."""
    sizes = [3, 24, 24, 1]
    weights = [rng.normal(0, 1 / np.sqrt(i), (o, i)).astype(np.float32) for i, o in itertools.pairwise(sizes)]
    biases = [rng.normal(0, 0.1, o).astype(np.float32) for o in sizes[1:]]
    model = policy_onnx(weights, biases, "tanh", "tanh", [0.0, 0.1, -0.3], [0.7, 0.7, 4.0], [-ACTION_HIGH],
                        [ACTION_HIGH])
    path = tmp_path / "gemm.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("graph", [_matmul_graph, _gemm_graph], ids=["matmul-relu-clip", "gemm-tanh-tanh"])
def test_onnx_import_acts_as_onnx_runtime(graph, tmp_path):
    path = graph(tmp_path, np.random.default_rng(0))
    summary = import_policy(path, ENV, tmp_path / "imported", ImportConfig(check_steps=200))
    obs = observations()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"obs": obs})[0]
    difference = max_difference(imported_actions(summary["checkpoint"], obs), expected)
    print(f"ONNX {path.stem}: max |action difference| {difference:.2e}")
    assert difference <= PARITY
    assert summary["obs_norm"] and summary["parity"]["max_abs_error"] <= PARITY
    assert summary["activation"] == ("relu" if graph is _matmul_graph else "tanh")
    assert summary["output"] == ("clip" if graph is _matmul_graph else "tanh")
    if graph is _matmul_graph:
        assert 0.05 < np.isclose(np.abs(expected), ACTION_HIGH).mean() < 0.95  # both sides of the clip


def test_onnx_import_refuses_an_unsupported_op(tmp_path):
    graph = helper.make_graph([helper.make_node("Softmax", ["obs"], ["action"])], "g",
                              [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["N", 3])])
    onnx.save(helper.make_model(graph), tmp_path / "softmax.onnx")
    with pytest.raises(UserError, match="unsupported ONNX op Softmax"):
        import_policy(tmp_path / "softmax.onnx", ENV, tmp_path / "out")


# ----------------------------------------------------------------------------- later stages

@pytest.mark.integration
@pytest.mark.parametrize("algo", ["PPO", "TD3"])
def test_evaluate_and_export_take_an_import(algo, sb3_models, tmp_path, capsys):
    """An actor-only PPO import (tanh trunk, clipped output) and a TD3 one with observation
    normalisation go through `tinypolicy evaluate` and `tinypolicy export`."""
    args = ["import", str(sb3_models[algo][1]), "--env", ENV, "--out", str(tmp_path / "imported")]
    if algo == "TD3":
        np.savez(tmp_path / "stats.npz", mean=np.array([0.1, 0.0, -0.5]), var=np.array([0.5, 0.4, 9.0]))
        args += ["--obs-stats", str(tmp_path / "stats.npz")]
    assert main(args) == 0
    assert main(["evaluate", str(tmp_path / "imported"), "--episodes", "1"]) == 0
    assert main(["export", str(tmp_path / "imported"), "--out", str(tmp_path / "bundle"), "--parity-samples", "200",
                 "--episodes", "1", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "bundle" / "export.json").read_text())
    # Every exported form within 1e-5 of the imported actor (not only within export's round-off
    # allowance, which is measured on the exported MLP itself).
    assert manifest["parity"]["within_tolerance"], manifest["parity"]["max_abs_error"]
    assert manifest["hidden_activation"] == ("tanh" if algo == "PPO" else "relu")
    assert manifest["output"] == ("clip" if algo == "PPO" else "tanh")


# ----------------------------------------------------------------------------- refusals

def test_refusals_are_one_line(sb3_models, tmp_path):
    cases = {
        "dqn.zip": (sb3_zip("stable_baselines3.dqn.policies", "Discrete"), ENV, "DQN"),
        "ppo_cartpole.zip": (sb3_zip("stable_baselines3.common.policies", "Discrete"), ENV, "Discrete action space"),
        "tqc.zip": (sb3_zip("sb3_contrib.tqc.policies"), ENV, "tinypolicy imports Stable-Baselines3 TD3"),
        "td3.zip": (sb3_models["TD3"][1].read_bytes(), "MountainCarContinuous-v0", "takes 3 observations"),
        "module.pt": (None, ENV, "pickled Python objects"),
    }
    torch.save(nn.Linear(3, 1), tmp_path / "module.pt")  # a whole module: only a pickle says what it is
    for name, (content, env_id, message) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=message):
            import_policy(tmp_path / name, env_id, tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_obs_stats_pickle_is_refused(sb3_models, tmp_path):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    VecNormalize(make_vec_env(ENV, n_envs=1)).save(tmp_path / "vecnormalize.pkl")
    with pytest.raises(UserError, match="pickle.*np.savez"):
        import_policy(sb3_models["TD3"][1], ENV, tmp_path / "out", ImportConfig(obs_stats=str(tmp_path /
                                                                                             "vecnormalize.pkl")))


def test_never_replaces_another_checkpoint(sb3_models, tmp_path):
    out = tmp_path / "imported"
    import_policy(sb3_models["TD3"][1], ENV, out)
    import_policy(sb3_models["TD3"][1], ENV, out, ImportConfig(activation="tanh"))  # the same source: replaced
    assert load_checkpoint(out).data["actor_arch"]["activation"] == "tanh"
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(UserError, match="not an import of this policy file"):
        import_policy(sb3_models["SAC"][1], ENV, out)
    assert (out / "checkpoint.pt").read_bytes() == before
