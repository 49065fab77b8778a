"""FLOP accounting (nanoGPT's definition, by hand) and the one peak every MFU divides by."""

import json

import pytest

from minigpt_jax import peak
from minigpt_jax.model import GPTConfig
from minigpt_jax.train_state import flops_per_token


def test_flops_per_token_by_hand_for_a_tiny_model():
    # vocab 60 pads to 64 rows; nanoGPT counts the 60 real rows of the tied wte once, no wpe.
    cfg = GPTConfig(vocab_size=60, block_size=16, n_layer=1, n_head=2, n_embd=8)
    wte = 60 * 8
    block = (
        2 * 8  # ln_1
        + 8 * 24
        + 24  # c_attn
        + 8 * 8
        + 8  # attn.c_proj
        + 2 * 8  # ln_2
        + 8 * 32
        + 32  # c_fc
        + 32 * 8
        + 8  # mlp.c_proj
    )
    ln_f = 2 * 8
    n = wte + block + ln_f
    assert n == 1368
    assert flops_per_token(cfg, 16) == 6 * 1368 + 12 * 1 * 8 * 16 == 9744
    assert flops_per_token(cfg, 8) == 6 * 1368 + 12 * 8 * 8  # T is the trained length


def test_vendor_figure_wins_on_a_known_accelerator(tmp_path, monkeypatch):
    def never(*_args, **_kw):
        raise AssertionError("a vendor figure needs no measurement")

    monkeypatch.setattr(peak, "measure_matmul_peak", never)
    path = tmp_path / "peak.json"
    assert peak.device_peak_flops("bfloat16", "NVIDIA H100 80GB HBM3", path=path) == 989e12
    assert peak.device_peak_flops("float32", "NVIDIA A100-SXM4-40GB", path=path) == 156e12
    # the longest matching name wins: a v5 lite is not a v5p
    assert peak.device_peak_flops("bfloat16", "TPU v5 lite", path=path) == 197e12
    assert peak.device_peak_flops("bfloat16", "TPU v5p", path=path) == 459e12
    assert not path.exists()


def test_measured_peak_is_cached_per_machine(tmp_path, monkeypatch):
    calls = []

    def fake_measure(dtype="float32", *_args, **_kw):
        calls.append(dtype)
        return 1e11 * len(calls)

    monkeypatch.setattr(peak, "measure_matmul_peak", fake_measure)
    path = tmp_path / "cache" / "peak.json"
    cpu = "cpu"
    assert peak.device_peak_flops("float32", cpu, path=path) == 1e11
    assert peak.device_peak_flops("float32", cpu, path=path) == 1e11  # from the cache
    assert calls == ["float32"]
    assert peak.device_peak_flops("bfloat16", cpu, path=path) == 2e11  # another key
    assert peak.device_peak_flops("float32", cpu, path=path, refresh=True) == 3e11
    assert peak.device_peak_flops("float32", cpu, path=path) == 3e11
    assert len(calls) == 3
    keys = list(json.loads(path.read_text()))
    assert len(keys) == 2 and all(peak.jax.__version__ in k for k in keys)


def test_damaged_cache_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setattr(peak, "measure_matmul_peak", lambda *_a, **_k: 5e10)
    path = tmp_path / "peak.json"
    path.write_text("{not json")
    assert peak.device_peak_flops("float32", "cpu", path=path) == 5e10
    assert json.loads(path.read_text())  # rewritten whole


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(peak.CACHE_ENV, str(tmp_path))
    assert peak.cache_path() == tmp_path / "peak_flops.json"


@pytest.mark.slow
def test_measured_matmul_peak_is_a_plausible_rate():
    flops = peak.measure_matmul_peak(sizes=(256,), repeats=2)
    assert 1e8 < flops < 1e16
