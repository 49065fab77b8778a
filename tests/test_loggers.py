"""loggers.py: every logger gets the metrics.jsonl records, read back with each tool's own format;
a resumed run shows every step once."""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import pytest
from conftest import read_metrics, tiny_config

from minigpt_jax import loggers
from minigpt_jax.checkpoint import checkpoint_dir
from minigpt_jax.config import ConfigError, validate_config


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} as TensorBoard itself loads them (purges applied)."""
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_history(run_dir: Path) -> list[dict[str, float]]:
    """History rows of the offline W&B runs under run_dir/wandb, in the order written.

    The .wandb file is a LevelDB-style log (7-byte file header, 32 KiB blocks, records of
    crc32 u32 / length u16 / type u8) of protobuf `Record`s; wandb ships the proto but no reader.
    wandb's service process writes it after `finish()` returns: wait for each run's exit record.
    """
    rows = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        deadline = time.monotonic() + 120  # a guard against a hung service, not a speed check
        while not any(r.HasField("exit") for r in _wandb_records(path)):
            assert time.monotonic() < deadline, f"{path} never got its exit record"
            time.sleep(0.1)
        for record in _wandb_records(path):
            if record.HasField("history"):
                items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
                rows.append({k: json.loads(v) for k, v in items.items()})
    return rows


def _wandb_records(path: Path) -> list:
    from wandb.proto.wandb_internal_pb2 import Record

    data, pos, pending, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left_in_block = 32768 - pos % 32768
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if (length == 0 and kind == 0) or pos + 7 + length > len(data):  # the end, or unwritten
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _record(step: int, loss: float) -> dict:
    return {"step": step, "train_loss": loss, "lr": 0.01, "tokens_per_s": 100.0}


def test_a_resumed_run_shows_each_step_once(tmp_path):
    pytest.importorskip("tensorboardX")
    run = tmp_path / "run"
    run.mkdir()
    first = [loggers.JsonlLogger(run / "metrics.jsonl"), loggers.TensorBoardLogger(run, {"a": 1})]
    for step in (2, 4, 6, 8):  # a crash after step 8, the last checkpoint at 4
        for log in first:
            log.write(step, _record(step, 10.0 - step))
    for log in first:
        log.close()
    again = [
        loggers.JsonlLogger(run / "metrics.jsonl", start_step=4),
        loggers.TensorBoardLogger(run, {"a": 1}, start_step=4),
    ]
    for step in (6, 8, 10):
        for log in again:
            log.write(step, _record(step, 100.0 + step))
    for log in again:
        log.close()

    expected = [(2, 8.0), (4, 6.0), (6, 106.0), (8, 108.0), (10, 110.0)]
    assert [(r["step"], r["train_loss"]) for r in read_metrics(run)] == expected
    scalars = tensorboard_scalars(run)
    assert sorted(scalars) == ["lr", "tokens_per_s", "train_loss"]  # the jsonl keys, no step
    assert scalars["train_loss"] == expected
    assert [s for s, _ in scalars["lr"]] == [2, 4, 6, 8, 10]


def test_jsonl_drops_a_half_written_line_and_names_a_bad_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "tra')
    loggers.JsonlLogger(path, start_step=5)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ConfigError, match=r"metrics.jsonl:2 is not a JSON line"):
        loggers.JsonlLogger(path, start_step=5)
    assert path.read_text() == '{"step": 1}\nnot json\n{"step": 3}\n'  # left as it was


def test_wandb_offline_run_holds_the_history_and_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    run.mkdir()
    log = loggers.WandbLogger(run, {"lr": 0.01, "model": {"n_layer": 2}}, "proj", "")
    for step in (3, 6):
        log.write(step, {**_record(step, 5.0 - step), "val_loss": 1.5})
    log.close()
    rows = wandb_history(run)
    assert [(r["_step"], r["train_loss"], r["val_loss"]) for r in rows] == [
        (3, 2.0, 1.5),
        (6, -1.0, 1.5),
    ]
    run_id = (run / "wandb_run_id").read_text().strip()
    assert list((run / "wandb").glob(f"offline-run-*-{run_id}"))


def test_loggers_key_is_checked_before_compiling(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ConfigError, match="'csv' is not one of jsonl, tensorboard, wandb"):
        validate_config(tiny_config(data, tmp_path / "run", loggers=("jsonl", "csv")))
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "wandb" else find_spec(name)
    )
    with pytest.raises(ConfigError) as e:
        validate_config(tiny_config(data, tmp_path / "run", loggers=("wandb",)))
    assert str(e.value).startswith("config.loggers: 'wandb' needs wandb")
    assert "pip install -e '.[wandb]'" in str(e.value)


@pytest.mark.slow
def test_training_logs_to_every_logger_and_resumes_the_same_curves(
    tiny_shards, tmp_path, monkeypatch
):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from minigpt_jax.train import train_and_evaluate

    run = tmp_path / "run"
    cfg = dict(total_steps=8, log_every=1, eval_every=4, checkpoint_every=4, keep_checkpoints=5)
    cfg["loggers"] = ("jsonl", "tensorboard", "wandb")
    train_and_evaluate(tiny_config(tiny_shards, run, **cfg))
    first = read_metrics(run)
    shutil.rmtree(checkpoint_dir(run) / "8")  # as if it crashed after logging step 8
    train_and_evaluate(tiny_config(tiny_shards, run, **cfg))

    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert records[:4] == first[:4]  # kept from the first run, not rewritten
    scalars = tensorboard_scalars(run)
    assert sorted(scalars) == sorted(set().union(*records) - {"step"})
    for tag, points in scalars.items():
        logged = [(r["step"], r[tag]) for r in records if tag in r]
        assert [s for s, _ in points] == [s for s, _ in logged], tag
        assert [v for _, v in points] == pytest.approx([v for _, v in logged], rel=1e-6), tag
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # one event file per start
    rows = wandb_history(run)  # the two offline runs share one W&B run id
    assert [r["_step"] for r in rows] == list(range(1, 9)) + list(range(5, 9))
    assert len({p.name.split("-")[-1] for p in (run / "wandb").glob("offline-run-*")}) == 1

    plot = pytest.importorskip("minigpt_jax.plot")
    fig = plot.plot_curves(plot.loss_panels([plot.run_curves(run)]), tmp_path / "c.png")
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2, 2]
