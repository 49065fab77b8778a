"""Sharding: dp / fsdp / dp x fsdp give the single-device losses, parameters really are split, bad
meshes and batches fail before compiling, and two processes train as one.

pytest's own process has one CPU device. Anything that needs eight runs this file as a script in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (`python tests/test_sharding.py
<worker> <json args>`), which prints one JSON line back.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:  # conftest's helpers, also when run as a script
    sys.path.insert(0, str(REPO / "tests"))

MESHES = {"dp8": (8, 1), "fsdp8": (1, 8), "dp2_fsdp4": (2, 4)}


# --- workers: run inside a subprocess with N simulated devices ------------------------------------


def _tiny_config(data_dir: str, run_dir: str, mesh: tuple[int, int], **overrides):
    from minigpt_jax.config import default_config, model_fields

    c = default_config()
    c.model = model_fields("tiny", vocab_size=257)
    c.data_dir, c.run_dir = data_dir, run_dir
    c.total_steps, c.batch_size, c.block_size = 3, 8, 32
    c.lr, c.warmup_steps, c.log_every, c.eval_every, c.eval_tokens = 1e-2, 1, 1, 0, 2048
    c.mesh_data, c.mesh_fsdp = mesh
    c.checkpoint_every = 0
    c.peak_tflops = 1.0  # MFU is not under test: skip measuring the CPU's matmul peak
    for key, value in overrides.items():
        c[key] = value
    return c


def worker_train(args: dict) -> dict:
    """train_and_evaluate for each named run (mesh + overrides): train losses and val loss."""
    from minigpt_jax.train import train_and_evaluate

    out = {}
    for name, run in args["runs"].items():
        run_dir = Path(args["run_root"]) / name
        cfg = _tiny_config(
            args["data_dir"], str(run_dir), tuple(run["mesh"]), **run.get("overrides", {})
        )
        train_and_evaluate(cfg)
        records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
        out[name] = {
            "train_loss": [r["train_loss"] for r in records],
            "val_loss": records[-1]["val_loss"],
        }
    return out


def _state_and_step(mesh_data: int, mesh_fsdp: int, model_kw: dict | None = None):
    import jax

    from minigpt_jax import sharding
    from minigpt_jax.model import GPT, GPTConfig
    from minigpt_jax.train_state import (
        create_train_state,
        make_lr_schedule,
        make_optimizer,
        make_train_step,
    )

    model = GPT(GPTConfig.preset("tiny", vocab_size=257, **(model_kw or {})))
    tx = make_optimizer(make_lr_schedule(1e-2, 1e-3, 1, 3))
    mesh = sharding.make_mesh(mesh_data, mesh_fsdp)
    _, _, init, step = sharding.jit_sharded(
        lambda rng: create_train_state(model, tx, rng), make_train_step(model, tx),
        jax.random.key(0), mesh,
    )
    return mesh, init(jax.random.key(0)), step


def worker_layout(args: dict) -> dict:
    """Where each leaf of a freshly initialised state lives: spec and per-device shard shapes; and
    whether splitting a batch-sharded batch into micro-batches moves any row between devices."""
    import re

    import jax
    import jax.numpy as jnp

    from minigpt_jax import sharding
    from minigpt_jax.train_state import _split_micro_batches

    mesh, state, _ = _state_and_step(*args["mesh"])
    k = 4
    split = jax.jit(
        lambda b: [jax.tree.map(lambda x, i=i: x[i], _split_micro_batches(b, k)) for i in range(k)],
        in_shardings=(sharding.batch_sharding(mesh),),
    )
    batch = {"inputs": jnp.arange(64 * 8, dtype=jnp.int32).reshape(64, 8)}
    hlo = split.lower(batch).compile().as_text()
    micro = split(jax.device_put(batch, sharding.batch_sharding(mesh)))
    layout = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        layout[jax.tree_util.keystr(path)] = {
            "shape": list(leaf.shape),
            "spec": list(leaf.sharding.spec),
            "devices": len(leaf.sharding.device_set),
            "shards": sorted({tuple(s.data.shape) for s in leaf.addressable_shards}),
            "num_shards": len(leaf.addressable_shards),
        }
    held: dict[str, int] = {}  # bytes of parameters each device really holds
    for leaf in jax.tree.leaves(state.params):
        for s in leaf.addressable_shards:
            held[str(s.device.id)] = held.get(str(s.device.id), 0) + s.data.nbytes
    shardings = jax.tree.map(lambda x: x.sharding, state.params)
    return {
        "mesh": dict(mesh.shape),
        "layout": layout,
        "param_bytes_held": held,
        "per_device_bytes": sharding.per_device_bytes(state.params, shardings),
        "split_collectives": len(re.findall(r" (all-|reduce-scatter|collective-permute)", hlo)),
        "micro_rows_per_device": sorted(
            {s.data.shape[0] for m in micro for s in m["inputs"].addressable_shards}
        ),
        "micro_rows": [np.asarray(m["inputs"][:, 0]).tolist() for m in micro],
    }


def _fixed_batches(steps: int = 3, batch: int = 8, seq: int = 32, vocab: int = 257):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, vocab, (steps, batch, seq + 1), dtype=np.int32)
    return [{"inputs": t[:, :-1], "targets": t[:, 1:]} for t in tokens]


def worker_fixed_batches(args: dict) -> dict:
    """Three steps on fixed batches; with several processes each feeds only its own rows."""
    import jax

    from minigpt_jax import sharding

    joined = sharding.initialize_distributed()
    mesh, state, step = _state_and_step(*args["mesh"])
    pid, nproc = jax.process_index(), jax.process_count()
    losses = []
    for b in _fixed_batches():
        rows = len(b["inputs"]) // nproc
        local = {k: v[pid * rows : (pid + 1) * rows] for k, v in b.items()}
        state, metrics = step(state, sharding.global_batch(local, mesh))
        losses.append(float(metrics["loss"]))
    return {
        "joined": joined,
        "process_count": nproc,
        "device_count": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "losses": losses,
    }


def worker_multihost(args: dict) -> dict:
    """One of several processes: fixed-batch steps (own rows only), then train_and_evaluate."""
    import jax

    from minigpt_jax.train import train_and_evaluate

    out = worker_fixed_batches(args)  # joins the other processes
    cfg = _tiny_config(args["data_dir"], args["run_dir"], tuple(args["mesh"]))
    out["process"], out["last"] = jax.process_index(), train_and_evaluate(cfg)
    return out


def worker_restore_eval(args: dict) -> dict:
    """Restore a run's last checkpoint onto this process's mesh and evaluate it as train.py does."""
    import jax

    from minigpt_jax import checkpoint, input_pipeline, sharding, shards
    from minigpt_jax.config import accumulation_steps
    from minigpt_jax.model import GPT
    from minigpt_jax.train_state import make_eval_step

    mesh = sharding.make_mesh(*args["mesh"])
    params, record = checkpoint.load_params(args["run_dir"], mesh=mesh)
    cfg = record["config"]
    eval_step = jax.jit(
        make_eval_step(GPT(record["model"])),
        in_shardings=(sharding.tree_shardings(params, mesh), sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
    batches = input_pipeline.eval_batches(
        shards.find_shards(cfg["data_dir"], "val"), cfg["block_size"],
        cfg["batch_size"] // accumulation_steps(
            cfg["batch_size"], cfg["micro_batch_size"], jax.device_count()
        ), cfg["eval_tokens"], 257,
    )
    sums = [eval_step(params, sharding.global_batch(b, mesh)) for b in batches]
    fc = params["h_0"]["mlp"]["c_fc"]["kernel"]
    return {
        "step": record["step"],
        "val_loss": sum(float(m["loss_sum"]) for m in sums) / sum(float(m["tokens"]) for m in sums),
        "fc_devices": len(fc.sharding.device_set),
        "fc_shards": sorted({tuple(s.data.shape) for s in fc.addressable_shards}),
    }


def _memory_report():
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory_report", REPO / "bench/memory_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


def worker_memory(args: dict) -> dict:
    """bench/memory_report.py's per-device numbers for the tiny model on each mesh."""
    from minigpt_jax import sharding
    from minigpt_jax.model import GPTConfig

    report = _memory_report()
    cfg = GPTConfig.preset("tiny", vocab_size=257)
    return {
        name: report.step_memory(cfg, sharding.make_mesh(*mesh), 16, 8, 32)
        for name, mesh in args["meshes"].items()
    }


WORKERS = {
    "train": worker_train,
    "layout": worker_layout,
    "fixed_batches": worker_fixed_batches,
    "restore_eval": worker_restore_eval,
    "multihost": worker_multihost,
    "memory": worker_memory,
}


# --- subprocess plumbing --------------------------------------------------------------------------


# conftest's persistent compilation cache, which the workers share: the runs of one mesh with and
# without accumulation, and the restores, compile the same init and eval programs.
_CACHE_VARS = (
    "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
)


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k in _CACHE_VARS or not k.startswith(("JAX_", "SLURM_", "OMPI_"))}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _launch(worker: str, args: dict, devices: int, **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, worker, json.dumps(args)],
        env=_env(devices, **extra_env), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise AssertionError(f"worker failed (rc {proc.returncode}):\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def run_worker(worker: str, args: dict, devices: int = 8) -> dict:
    return _result(_launch(worker, args, devices))


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


# --- tests: in-process, one device --------------------------------------------------------------


def test_mesh_shape_fills_minus_one_and_names_bad_keys():
    from minigpt_jax.config import ConfigError
    from minigpt_jax.sharding import mesh_shape

    assert mesh_shape(-1, 1, 8) == (8, 1)
    assert mesh_shape(2, -1, 8) == (2, 4)
    assert mesh_shape(-1, 8, 8) == (1, 8)
    with pytest.raises(ConfigError, match="config.mesh_fsdp: 3 does not divide the 8 devices"):
        mesh_shape(-1, 3, 8)
    with pytest.raises(ConfigError, match="config.mesh_data: .* product is 8"):
        mesh_shape(2, 2, 8)
    with pytest.raises(ConfigError, match="cannot both be -1"):
        mesh_shape(-1, -1, 8)
    with pytest.raises(ConfigError, match="config.mesh_data: 0"):
        mesh_shape(0, 8, 8)


def test_param_spec_shards_largest_divisible_dim_and_replicates_small_leaves():
    from jax.sharding import PartitionSpec as P

    from minigpt_jax.sharding import param_spec

    assert param_spec((768, 2304), 8) == P(None, "fsdp")
    assert param_spec((3072, 768), 8) == P("fsdp", None)
    assert param_spec((1600, 4800), 8) == P(None, "fsdp")
    assert param_spec((50304, 768), 8) == P("fsdp", None)
    assert param_spec((1600, 50257), 8) == P("fsdp", None)  # largest not divisible: the next one
    assert param_spec((7, 4099), 8) == P()  # nothing divisible: replicated, still correct
    assert param_spec((768,), 8) == P()  # LayerNorm / bias: too small to be worth a gather
    assert param_spec((), 8) == P()  # Adam's step count
    assert param_spec((768, 2304), 1) == P()


def test_optimizer_state_follows_its_parameter():
    """Adam's mu and nu take their parameter's spec, so the update needs no communication."""
    import jax

    from minigpt_jax.model import GPT, GPTConfig
    from minigpt_jax.sharding import param_spec
    from minigpt_jax.train_state import create_train_state, make_lr_schedule, make_optimizer

    model = GPT(GPTConfig.preset("gpt2"))
    tx = make_optimizer(make_lr_schedule(1e-3, 1e-4, 10, 100))
    state = jax.eval_shape(lambda k: create_train_state(model, tx, k), jax.random.key(0))
    specs = jax.tree.map(lambda x: param_spec(tuple(x.shape), 8), state)
    adam = specs.opt_state[1][0]
    assert jax.tree.leaves(adam.mu) == jax.tree.leaves(specs.params)
    assert jax.tree.leaves(adam.nu) == jax.tree.leaves(specs.params)
    assert adam.count == specs.step == jax.sharding.PartitionSpec()
    sharded = [s for s in jax.tree.leaves(specs.params) if s != jax.sharding.PartitionSpec()]
    assert len(sharded) == 2 + 4 * 12  # wte, wpe and the four matrices of every block


def test_batch_the_mesh_cannot_split_is_rejected_by_validation(tiny_shards, tmp_path):
    from minigpt_jax.config import ConfigError, validate_config

    cfg = _tiny_config(str(tiny_shards), str(tmp_path / "run"), (-1, 8), batch_size=12)
    with pytest.raises(ConfigError, match="config.batch_size: 12 sequences .* over 8 devices"):
        validate_config(cfg, num_devices=8)
    cfg = _tiny_config(
        str(tiny_shards), str(tmp_path / "run"), (-1, 8), batch_size=48, micro_batch_size=4
    )  # 6 sequences per device do not split into micro-batches of 4
    with pytest.raises(ConfigError, match="config.micro_batch_size"):
        validate_config(cfg, num_devices=8)


def test_initialize_distributed_is_a_no_op_alone_and_rejects_half_a_description(monkeypatch):
    from minigpt_jax import sharding

    for name in list(os.environ):
        if name.startswith(("JAX_", "SLURM_", "OMPI_")):
            monkeypatch.delenv(name)
    assert sharding.initialize_distributed() is False
    # An sbatch script's own shell (outside any `srun` step) is one process, whatever --ntasks says.
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert sharding.initialize_distributed() is False
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    with pytest.raises(sharding.DistributedError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
        sharding.initialize_distributed()
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(sharding.DistributedError, match="no JAX_COORDINATOR_ADDRESS"):
        sharding.initialize_distributed()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(sharding.DistributedError, match="not an integer"):
        sharding.initialize_distributed()


# --- tests: eight simulated devices in a subprocess -----------------------------------------------


@pytest.fixture(scope="module")
def reference_and_meshes(tmp_path_factory):
    """Single-device runs and eight-device runs of every mesh, in two processes started together."""
    from conftest import write_random_shards

    root = tmp_path_factory.mktemp("sharded_runs")
    data_dir = str(write_random_shards(root / "data"))
    accum = {"batch_size": 16, "micro_batch_size": 1}  # per device: 16 steps on 1, 2 on 8
    one = _launch("train", {"data_dir": data_dir, "run_root": str(root / "one"), "runs": {
        "single": {"mesh": (1, 1)},
        "single_accum": {"mesh": (1, 1), "overrides": accum},
    }}, devices=1)
    eight = _launch("train", {"data_dir": data_dir, "run_root": str(root / "eight"), "runs": {
        **{name: {"mesh": mesh} for name, mesh in MESHES.items()},
        "dp2_fsdp4_accum": {"mesh": MESHES["dp2_fsdp4"], "overrides": accum},
    }}, devices=8)
    return {**_result(one), **_result(eight), "root": root}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MESHES))
def test_sharded_losses_match_single_device(reference_and_meshes, name):
    ref, got = reference_and_meshes["single"], reference_and_meshes[name]
    assert len(got["train_loss"]) == 3
    assert _rel(got["train_loss"], ref["train_loss"]) < 1e-5, (got, ref)
    assert _rel(got["val_loss"], ref["val_loss"]) < 1e-5, (got, ref)
    assert ref["train_loss"][2] < ref["train_loss"][0]  # the steps really update the model


@pytest.mark.slow
def test_gradient_accumulation_under_dp_x_fsdp_matches_single_device(reference_and_meshes):
    ref, got = reference_and_meshes["single_accum"], reference_and_meshes["dp2_fsdp4_accum"]
    assert _rel(got["train_loss"], ref["train_loss"]) < 1e-5, (got, ref)
    assert _rel(got["val_loss"], ref["val_loss"]) < 1e-5, (got, ref)


@pytest.mark.slow
def test_checkpoint_moves_between_meshes(reference_and_meshes):
    """fsdp=8 -> 1 device and 1 device -> fsdp=8 restore to the same eval loss."""
    root = reference_and_meshes["root"]
    to_one = _launch("restore_eval", {"run_dir": str(root / "eight" / "fsdp8"), "mesh": (1, 1)}, 1)
    to_eight = _launch(
        "restore_eval", {"run_dir": str(root / "one" / "single"), "mesh": (1, 8)}, 8
    )
    from_fsdp, from_one = _result(to_one), _result(to_eight)
    assert from_fsdp["step"] == from_one["step"] == 3
    assert from_fsdp["fc_devices"] == 1 and from_fsdp["fc_shards"] == [[64, 256]]
    assert from_one["fc_devices"] == 8 and from_one["fc_shards"] == [[64, 32]]
    assert _rel(from_fsdp["val_loss"], reference_and_meshes["fsdp8"]["val_loss"]) < 1e-5
    assert _rel(from_one["val_loss"], reference_and_meshes["single"]["val_loss"]) < 1e-5


def test_fsdp_really_shards_params_and_optimizer_state():
    out = run_worker("layout", {"mesh": (1, 8)})
    assert out["mesh"] == {"data": 1, "fsdp": 8}
    layout = out["layout"]
    fc = layout[".params['h_0']['mlp']['c_fc']['kernel']"]
    assert fc["shape"] == [64, 256] and fc["spec"] == [None, "fsdp"]
    assert fc["num_shards"] == 8 and fc["devices"] == 8 and fc["shards"] == [[64, 32]]
    wte = layout[".params['wte']['embedding']"]
    assert wte["shape"] == [320, 64] and wte["shards"] == [[40, 64]]
    ln = layout[".params['h_0']['ln_1']['scale']"]
    assert ln["spec"] == [] and ln["shards"] == [[64]] and ln["num_shards"] == 8
    for moment in ("mu", "nu"):
        m = layout[f".opt_state[1][0].{moment}['h_0']['mlp']['c_fc']['kernel']"]
        assert m["spec"] == fc["spec"] and m["shards"] == [[64, 32]]
    assert layout[".step"]["shards"] == [[]]
    # Tiny model, by hand: leaves of >= 4096 parameters split 8 ways: wte 320x64, wpe 64x64 and
    # per layer c_attn 64x192, attn c_proj 64x64, c_fc 64x256, mlp c_proj 256x64 -> 122880.
    # Replicated: per layer 2 LayerNorms (4x64) and biases 192+64+256+64, and ln_f -> 1792.
    # So each device holds 122880/8 + 1792 = 17152 float32s of the 124672, 1/8 + 1568 of padding.
    assert out["param_bytes_held"] == {str(d): 17152 * 4 for d in range(8)}
    assert out["per_device_bytes"] == 17152 * 4  # sharding.per_device_bytes' plan agrees
    # Micro-batch i takes rows i, i+k, ...: every device keeps its own rows, nothing is exchanged.
    assert out["split_collectives"] == 0
    assert out["micro_rows_per_device"] == [2]  # 64 rows / 4 micro-batches / 8 devices
    assert out["micro_rows"][1][:3] == [1 * 8, 5 * 8, 9 * 8]


def test_memory_report_counts_what_the_compiled_step_takes():
    out = run_worker("memory", {"meshes": {"dp8": (8, 1), "fsdp8": (1, 8)}})
    dp, fsdp = out["dp8"], out["fsdp8"]
    for m in (dp, fsdp):  # the step's arguments are the state (+ its int32 step) and the batch
        assert m["argument"] == m["params"] + m["opt_state"] + m["batch"] + 4
        assert m["alias"] >= m["params"] + m["opt_state"]  # the donated state is updated in place
        assert m["opt_state"] > 2 * m["params"] - 64  # Adam's mu and nu (+ two int32 counts)
    # The tiny model's 124672 float32 parameters, of which FSDP leaves 17152 per device (counted
    # by hand in test_fsdp_really_shards_params_and_optimizer_state).
    assert dp["params"] == 124672 * 4 and fsdp["params"] == 17152 * 4
    assert fsdp["opt_state"] < dp["opt_state"] / 6
    assert fsdp["batch"] == dp["batch"] == 2 * 2 * 32 * 4  # 16 rows / 8 devices, inputs + targets
    assert dp["collectives"]["all-reduce"] > 0  # the gradients (and the loss) are reduced
    assert fsdp["collectives"]["all-gather"] > 0 == dp["collectives"]["all-gather"]  # FSDP weights


def test_cli_rejects_indivisible_batch_and_mesh_before_compiling(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "minigpt_jax.train", "--config", "configs/small.py",
         f"--config.data_dir={tiny_shards}", f"--config.run_dir={run_dir}",
         "--config.batch_size=12", "--config.mesh_fsdp=8", "--config.mesh_data=-1"],
        env=_env(8), cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config.batch_size: 12 sequences cannot be split over 8 devices" in proc.stderr
    assert not (run_dir / "metrics.jsonl").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "minigpt_jax.train", "--config", "configs/small.py",
         f"--config.data_dir={tiny_shards}", f"--config.run_dir={run_dir}", "--config.mesh_fsdp=3"],
        env=_env(8), cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: config.mesh_fsdp: 3 does not divide the 8 devices" in proc.stderr
    assert not (run_dir / "metrics.jsonl").exists()


def test_remat_gives_the_same_gradients_and_saves_fewer_activations():
    """Per-block remat with dropout on (so `deterministic` must be static under nn.remat): the same
    loss and gradients, and far fewer residuals kept for the backward pass."""
    import jax

    from minigpt_jax.loss import summed_cross_entropy
    from minigpt_jax.model import GPT, GPTConfig

    batch = _fixed_batches(1, batch=4, seq=64)[0]
    results = {}
    for remat in (False, True):
        cfg = GPTConfig.preset("tiny", vocab_size=257, dropout=0.1, remat=remat)
        model = GPT(cfg)
        params = model.init(jax.random.key(0), batch["inputs"][:1])["params"]

        def loss_fn(p, model=model):
            logits = model.apply(
                {"params": p}, batch["inputs"], deterministic=False,
                rngs={"dropout": jax.random.key(3)},
            )
            loss_sum, count = summed_cross_entropy(logits, batch["targets"])
            return loss_sum / count

        loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
        saved, attention = _memory_report().activation_bytes(cfg, 4, 64)
        assert 0 < attention < saved
        results[remat] = (float(loss), grads, saved)
    (loss0, grads0, saved0), (loss1, grads1, saved1) = results[False], results[True]
    assert abs(loss1 - loss0) <= 1e-6 * loss0
    for g0, g1 in zip(jax.tree.leaves(grads0), jax.tree.leaves(grads1), strict=True):
        np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-6)
    assert saved1 < saved0 / 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tiny_shards, tmp_path):
    """Two processes x four CPU devices, joined by jax.distributed on localhost (gloo collectives):
    each feeding only its half of every batch, they give the losses of one process with eight
    devices; train_and_evaluate logs once (process 0) and every process writes its part of the
    Orbax checkpoint, which one device then restores to the same validation loss."""
    run_dir = tmp_path / "run"
    args = {"mesh": (2, 4), "data_dir": str(tiny_shards), "run_dir": str(run_dir)}
    ref = _launch("fixed_batches", args, devices=8)
    port = _free_port()
    procs = [
        _launch(
            "multihost", args, devices=4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
        )
        for i in range(2)
    ]
    ref = _result(ref)
    outs = [p.communicate() for p in procs]
    if any(p.returncode for p in procs):
        stderr = "\n".join(err for _, err in outs)
        if "gloo" in stderr.lower() and "not" in stderr.lower() and "support" in stderr.lower():
            pytest.skip("this jaxlib has no multi-process CPU collectives")
        raise AssertionError(stderr[-4000:])
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert not ref["joined"] and ref["process_count"] == 1
    assert [r["process"] for r in results] == [0, 1]
    for r in results:
        assert r["joined"] and r["process_count"] == 2
        assert r["device_count"] == 8 and r["local_devices"] == 4
        assert _rel(r["losses"], ref["losses"]) < 1e-5, (r, ref)
    assert results[0]["last"]["train_loss"] == results[1]["last"]["train_loss"]

    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3]  # one line per step: process 1 wrote nothing
    assert sorted(p.name for p in (run_dir / "checkpoints" / "3" / "data").glob("process_*")) == [
        "process_0-of-2.json", "process_1-of-2.json"
    ]
    restored = run_worker("restore_eval", {"run_dir": str(run_dir), "mesh": (1, 1)}, devices=1)
    assert restored["step"] == 3
    assert _rel(restored["val_loss"], records[-1]["val_loss"]) < 1e-5


if __name__ == "__main__":
    result = WORKERS[sys.argv[1]](json.loads(sys.argv[2]))
    print(json.dumps(result))
