"""Reinforcement learning: the policy-gradient loss, the proposer, the arithmetic task's interface,
and the loop end to end on a toy task whose optimum is known (with exact resume)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_metrics, tiny_config, write_random_shards

from minigpt_jax.config import add_rl_keys
from minigpt_jax.curriculum import Proposer
from minigpt_jax.policy_gradient import (
    drop_rows_without_signal,
    group_advantages,
    line_credit,
    make_pg_step,
    policy_gradient_loss,
    rollout_batch,
    rows_with_signal,
    token_lines,
    token_logprobs,
)

# --- the loss -------------------------------------------------------------------------------


def test_group_advantages_subtract_the_group_mean_and_optionally_scale():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    np.testing.assert_allclose(
        group_advantages(rewards),
        [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [-0.75, -0.75, -0.75, 2.25]],
    )
    scaled = group_advantages(rewards, scale_by_std=True)
    np.testing.assert_allclose(scaled[0], [1, -1, -1, 1], atol=1e-5)
    np.testing.assert_allclose(scaled[1], 0)  # an all-right group teaches nothing
    np.testing.assert_allclose(scaled[2], np.array([-1, -1, -1, 3]) / np.sqrt(3), atol=1e-5)


def test_rollout_batch_masks_prompts_and_padding():
    eot = 9
    batch = rollout_batch(
        prompts=[[9, 1, 2], [9, 3]],
        completions=[[4], [5, 6, 7]],
        ended=[True, False],  # row 1 ran out of tokens: no eot to learn
        advantages=[0.5, -1.0],
        eot_id=eot,
        length=5,
    )
    np.testing.assert_array_equal(batch["inputs"], [[9, 1, 2, 4, 9], [9, 3, 5, 6, 7]])
    np.testing.assert_array_equal(batch["targets"], [[1, 2, 4, 9, 9], [3, 5, 6, 7, 9]])
    # row 0 chose 4 then eot (targets 2 and 3); row 1 chose 5, 6, 7 (targets 1..3)
    np.testing.assert_array_equal(batch["weights"], [[0, 0, 1, 1, 0], [0, 1, 1, 1, 0]])
    # each row's advantage sits on its chosen targets only
    np.testing.assert_array_equal(batch["advantages"], [[0, 0, 0.5, 0.5, 0], [0, -1, -1, -1, 0]])
    with pytest.raises(ValueError, match="tokens"):
        rollout_batch([[9, 1]], [[1, 2, 3, 4, 5]], [True], [0.0], eot, length=4)
    per_token = rollout_batch([[9, 1, 2], [9, 3]], [[4], [5, 6, 7]], [True, False],
                              [[0.25, -2.0], [1.0, 2.0, 3.0]], eot, 5)
    np.testing.assert_array_equal(per_token["advantages"], [[0, 0, 0.25, -2, 0], [0, 1, 2, 3, 0]])
    with pytest.raises(ValueError, match="2 advantages for 3 tokens"):
        rollout_batch([[9, 3]], [[5, 6, 7]], [False], [[1.0, 2.0]], eot, 5)


def test_line_credit_is_right_through_the_line_minus_the_groups_share():
    # three samples; right through 2, 0 and 3 lines; tokens in lines 0, 0, 1, 2, 3 (say)
    lines = [[0, 0, 1, 2, 3]] * 3
    credit = line_credit([2, 0, 3], lines)
    share = np.array([2 / 3, 2 / 3, 2 / 3, 1 / 3, 0])  # of the group right through each line
    np.testing.assert_allclose(credit[0], np.array([1, 1, 1, 0, 0]) - share, atol=1e-6)
    np.testing.assert_allclose(credit[1], -share, atol=1e-6)  # wrong from its first line
    np.testing.assert_allclose(credit[2], np.array([1, 1, 1, 1, 0]) - share, atol=1e-6)
    # a group that is all right (or all wrong) through a line learns nothing there
    np.testing.assert_allclose(line_credit([4, 4], [[0, 1], [0, 1]]), 0)


def test_token_lines_start_counting_after_each_newline():
    # "7+", "\n", "A:", "1\n", then end-of-text: the eot belongs to the answer line it closes
    assert token_lines([0, 1, 0, 1], ended=True) == [0, 0, 1, 1, 1]
    assert token_lines([0, 1, 0, 1], ended=False) == [0, 0, 1, 1]
    assert token_lines([0, 2, 0], ended=False) == [0, 0, 2]  # a token writing two newlines
    assert token_lines([], ended=True) == [0]


def test_policy_gradient_loss_matches_a_hand_computation():
    logp = jnp.array([[-9.0, -1.0, -2.0, -9.0], [-9.0, -0.5, -3.0, -4.0]])
    weights = jnp.array([[0, 1, 1, 0], [0, 1, 1, 1]], jnp.float32)
    adv = jnp.array([[5.0, 2.0, 2.0, 7.0], [5.0, -1.0, -1.0, -1.0]])  # 5, 7: off the weights
    loss, metrics = policy_gradient_loss(logp, weights, adv)
    # token-level: -(2*(-1) + 2*(-2) + (-1)*(-0.5) + (-1)*(-3) + (-1)*(-4)) / 5 tokens
    assert float(loss) == pytest.approx(-(-2 - 4 + 0.5 + 3 + 4) / 5)
    assert float(metrics["logp"]) == pytest.approx((-1 - 2 - 0.5 - 3 - 4) / 5)
    ref = logp + jnp.array([[0, 0.1, -0.2, 0], [0, 0.0, 0.3, 0]])
    loss_kl, metrics = policy_gradient_loss(logp, weights, adv, ref, kl_coef=0.5)
    k3 = [np.exp(d) - d - 1 for d in (0.1, -0.2, 0.0, 0.3, 0.0)]
    assert float(metrics["kl"]) == pytest.approx(sum(k3) / 5, rel=1e-5)
    assert float(loss_kl) == pytest.approx(float(loss) + 0.5 * sum(k3) / 5, rel=1e-5)


def test_token_logprobs_follow_the_sampling_temperature():
    logits = jnp.array([[[2.0, 0.0, -1.0]]])
    got = token_logprobs(logits, jnp.array([[0]]), temperature=2.0)
    expected = 1.0 - np.log(np.exp(1.0) + 1.0 + np.exp(-0.5))
    assert float(got[0, 0]) == pytest.approx(expected, rel=1e-6)


def test_one_step_moves_probability_toward_the_better_sample():
    """The step's direction, not its formula: the advantaged completion becomes likelier."""
    import optax

    from minigpt_jax.model import GPT, GPTConfig
    from minigpt_jax.train_state import create_train_state

    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=16, block_size=8)
    model = GPT(cfg)
    tx = optax.sgd(0.05)  # small enough not to overshoot
    state = create_train_state(model, tx, jax.random.key(0))
    batch = rollout_batch([[1, 2], [1, 2]], [[3], [4]], [False, False], [1.0, -1.0], 0, 4)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    def p_next(params, token):
        logits = model.apply({"params": params}, jnp.array([[1, 2]]))
        return float(jax.nn.softmax(logits[0, -1])[token])

    before = p_next(state.params, 3), p_next(state.params, 4)
    state, metrics = jax.jit(make_pg_step(model, tx, temperature=1.0))(state, batch)
    after = p_next(state.params, 3), p_next(state.params, 4)
    assert after[0] > before[0] and after[1] < before[1]
    assert int(state.step) == 1 and np.isfinite(float(metrics["grad_norm"]))


def test_rows_with_signal_keep_the_full_batchs_step_on_fewer_rows():
    """Dropping the rows whose advantages are all zero, with the kept advantages rescaled, must
    give the full batch's loss and update: the same step for less compute."""
    import optax

    from minigpt_jax.model import GPT, GPTConfig
    from minigpt_jax.train_state import create_train_state

    prompts = [[1, 2], [1, 2], [1, 5], [1, 5], [1, 6], [1, 6]]
    outs = [[3, 4], [4], [3], [3, 7, 7], [5, 5], [6]]
    ended = [True, False, True, True, False, True]
    adv = [0.5, -0.5, 0.0, 0.0, np.array([0.0, 1.0]), np.array([0.0, 0.0])]  # per token too
    chosen = [len(o) + e for o, e in zip(outs, ended, strict=True)]
    keep, size, scale = rows_with_signal(adv, chosen, granule=2)
    assert chosen == [3, 1, 2, 4, 2, 2] and keep == [0, 1, 4] and size == 4
    assert scale == pytest.approx(6 / 14)  # kept chosen tokens / all chosen tokens
    assert rows_with_signal([0.0] * 6, chosen, granule=2)[:2] == ([], 2)  # one granule
    assert [rows_with_signal([1.0] * n + [0.0] * (96 - n), [1] * 96, 8)[1]
            for n in (1, 9, 17, 25, 33, 49, 65, 90)] == [8, 16, 24, 32, 48, 64, 96, 96]

    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=16, block_size=8)
    model = GPT(cfg)
    tx = optax.sgd(0.1)
    state = create_train_state(model, tx, jax.random.key(0))
    step = jax.jit(make_pg_step(model, tx, temperature=1.0))
    full = rollout_batch(prompts, outs, ended, adv, 0, 6)
    *dropped, share = drop_rows_without_signal(prompts, outs, ended, adv, 0, granule=2)
    assert share == 0.5
    kept = rollout_batch(*dropped, 0, 6)
    assert kept["inputs"].shape == (4, 6) and kept["weights"][3].sum() == 0
    a, metrics_a = step(state, {k: jnp.asarray(v) for k, v in full.items()})
    b, metrics_b = step(state, {k: jnp.asarray(v) for k, v in kept.items()})
    assert float(metrics_a["loss"]) == pytest.approx(float(metrics_b["loss"]), rel=1e-5)
    assert float(metrics_a["grad_norm"]) > 0
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


# --- the proposer ---------------------------------------------------------------------------


class LadderTask:
    """Cells 1..8 ("digits"), each needing the one before; only cells 1-2 are trained."""

    name = "ladder"

    def cells(self):
        return list(range(1, 9))

    def trained_cells(self):
        return [1, 2]

    def prerequisite(self, cell):
        return None if cell <= 2 else cell - 1

    def cell_name(self, cell):
        return f"len {cell}"

    def cell_of(self, problem):
        return problem


def _practise(kind: str, steps: int) -> tuple[float, list[int]]:
    """A simulated solver that solves cells <= its skill and improves only by attempting the
    cell just beyond it: (final skill, the proposer's most drawn cell every 30 steps)."""
    proposer = Proposer(LadderTask(), kind, unlock=0.6)
    rng, skill, favourite = random.Random(0), 1.0, []
    for t in range(steps):
        cells = proposer.draw(rng, 16)
        proposer.update(cells, [float(c <= skill) for c in cells])
        skill += 0.02 * sum(c == int(skill) + 1 for c in cells)
        if t % 30 == 29:
            favourite.append(proposer.cells[int(np.argmax(proposer.weights()))])
    return skill, favourite


def test_frontier_proposer_moves_to_longer_cells_as_the_solver_improves():
    proposer = Proposer(LadderTask(), "frontier", unlock=0.6)
    assert proposer.open_cells().tolist() == [True, True] + [False] * 6
    skill, favourite = _practise("frontier", 150)
    assert favourite == sorted(favourite) and favourite[-1] >= favourite[0] + 3, favourite
    assert skill > 7.5
    # uniform over the open cells also opens longer ones, but practises the frontier less
    uniform_skill, _ = _practise("uniform", 150)
    assert uniform_skill < skill


def test_uniform_and_mixture_proposers():
    task = LadderTask()
    uniform = Proposer(task, "uniform")
    drawn = uniform.draw(random.Random(1), 400)
    assert set(drawn) == {1, 2}  # only open cells
    assert Proposer(task, "mixture").draw(random.Random(1), 3) == [None, None, None]
    with pytest.raises(ValueError, match="proposer"):
        Proposer(task, "greedy")


@pytest.mark.parametrize("kind", ["uniform", "frontier"])
def test_named_cells_are_the_only_practice_whatever_their_prerequisites(kind):
    proposer = Proposer(LadderTask(), kind, cells=["len 6", "len 8"])
    # len 6 and len 8 need len 5 and len 7, never attempted: named, they are open all the same
    assert proposer.open_cells().tolist() == [False] * 5 + [True, False, True]
    rng = random.Random(0)
    for _ in range(20):  # however the outcomes move the frontier's weights
        cells = proposer.draw(rng, 16)
        assert set(cells) <= {6, 8}
        proposer.update(cells, [float(c == 6) for c in cells])
    assert set(proposer.draw(rng, 400)) == {6, 8}
    assert proposer.stats["attempts"].shape == (8,)  # every cell kept: checkpoints keep their shape
    assert proposer.stats["attempts"][[0, 1, 2, 3, 4, 6]].sum() == 0


def test_named_cells_must_be_the_tasks():
    from minigpt_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cells: \['len 9'\] are not.*max_digits.*len 1"):
        Proposer(LadderTask(), "frontier", cells=["len 2", "len 9"])
    with pytest.raises(TypeError, match="sequence of names"):
        Proposer(LadderTask(), "frontier", cells="len 2")


def test_named_cells_leave_the_ladder_where_it_was():
    """Cells not named keep their counts while practice is narrowed: dropping the names later
    does not close the cells the ladder had opened."""
    proposer = Proposer(LadderTask(), "frontier", unlock=0.6)
    for _ in range(10):  # solve cells 1-3: cell 4 opens
        proposer.update([1, 2, 3] * 4, [1.0] * 12)
    assert proposer.open_cells()[3]
    narrowed = Proposer(LadderTask(), "frontier", unlock=0.6, cells=["len 8"])
    narrowed.stats = proposer.stats
    for _ in range(200):
        narrowed.update([8] * 4, [0.0] * 4)
    np.testing.assert_array_equal(narrowed.stats["attempts"][:7], proposer.stats["attempts"][:7])
    assert narrowed.stats["attempts"][7] == pytest.approx(4 / (1 - 0.95), rel=1e-3)
    proposer.stats = narrowed.stats
    assert proposer.open_cells()[3]


# --- the arithmetic task --------------------------------------------------------------------


class LongerLadder(LadderTask):
    """The ladder with two more rungs: a continued run allowed longer numbers."""

    def cells(self):
        return list(range(1, 11))


def test_carried_statistics_go_to_the_cells_of_the_same_name():
    source = Proposer(LadderTask(), "frontier", unlock=0.6)
    for cell in range(1, 9):  # each cell its own counts: cells 1-4 solved, 5 half, 6-8 not
        source.update([cell] * cell, [1.0 if cell <= 4 else 0.5 if cell == 5 else 0.0] * cell)
    names = [LadderTask().cell_name(c) for c in source.cells]
    target = Proposer(LongerLadder(), "frontier", unlock=0.6)
    # the source's arrays in another order, its len 7 renamed to one the target does not have
    order = [3, 0, 7, 1, 2, 4, 5, 6]
    moved = {k: v[order] for k, v in source.stats.items()}
    sent = [names[i] for i in order[:-1]] + ["len 99"]
    assert target.carry(sent, moved) == 7
    for key in ("attempts", "successes"):
        carried = [0, 1, 2, 3, 4, 5, 7]  # len 1-6 and len 8
        np.testing.assert_array_equal(target.stats[key][carried], source.stats[key][carried])
        assert not target.stats[key][[6, 8, 9]].any()  # len 7 (sent as len 99), 9, 10: prior
    assert target.open_cells().tolist() == [True] * 5 + [False] * 5
    assert not Proposer(LongerLadder(), "frontier").open_cells()[2]


@pytest.fixture(scope="module")
def arithmetic_dir(tmp_path_factory) -> Path:
    from minigpt_jax.tasks.arithmetic import data

    out = tmp_path_factory.mktemp("arith") / "data"
    data.main(["--out_dir", str(out), "--train_tokens", "20000", "--val_tokens", "2048"])
    return out


def test_arithmetic_task_cells_rewards_and_heldout(arithmetic_dir):
    from minigpt_jax.tasks import load_task
    from minigpt_jax.tasks.arithmetic import Problem, solution

    options = {"max_digits": "+:5", "process_weight": 0.5}
    task = load_task("arithmetic", str(arithmetic_dir), options)
    assert ("+", 3, 3) in task.trained_cells() and ("+", 4, 4) not in task.trained_cells()
    assert ("+", 5, 5) in task.cells() and ("+", 6, 6) not in task.cells()
    assert task.prerequisite(("+", 5, 5)) == ("+", 4, 4)
    assert task.prerequisite(("+", 3, 3)) is None
    assert task.prerequisite(("/", 4, 2)) is None
    p = Problem("*", 47, 85)
    assert task.reward(p, solution(p)) == 1.5
    assert task.reward(p, "A:3995\n") == 1.0  # right answer, no steps to verify
    assert task.reward(p, solution(Problem("*", 47, 86))) == 0.0
    verified_only = load_task(
        "arithmetic", str(arithmetic_dir), {"answer_weight": 0.0, "process_weight": 1.0}
    )
    assert verified_only.reward(p, solution(p)) == 1.0
    assert verified_only.reward(p, "A:3995\n") == 0.0  # the right answer alone earns nothing
    assert task.cell_name(task.cell_of(p)) == "mul 2x2"
    heldout = set(task.heldout())
    rng = random.Random(0)
    drawn = [task.problem(rng, ("+", 2, 2)) for _ in range(3000)]
    assert not heldout & set(drawn) and all(len(str(q.a)) == 2 for q in drawn)
    assert any(q.op == "/" for q in (task.problem(rng, None) for _ in range(200)))
    # longer-number test problems are scored once the curriculum may reach them, never drawn
    assert ("+", 4, 4) in {task.cell_of(q) for q in task.heldout()}
    plain = load_task("arithmetic", str(arithmetic_dir))
    assert ("+", 4, 4) not in {plain.cell_of(q) for q in plain.heldout()}
    assert not set(task.heldout()) & {task.problem(rng, ("+", 4, 4)) for _ in range(300)}


def test_rl_refuses_a_budget_that_cuts_a_curriculum_cells_reference_short(
    arithmetic_dir, tmp_path
):
    """A cell whose worked solution does not fit max_new_tokens scores 0 whatever the policy
    writes: refused before anything is written, naming the key, the cell and the tokens needed."""
    from minigpt_jax.errors import ConfigError
    from minigpt_jax.rl import check_completion_budget, train_rl
    from minigpt_jax.tasks import load_task
    from minigpt_jax.tasks.arithmetic import Problem, solution
    from minigpt_jax.tokenizer import ByteTokenizer

    task = load_task("arithmetic", str(arithmetic_dir), {"max_digits": "+:12"})
    big = 10**12 - 1
    need = len(solution(Problem("+", big, big))) + 1  # the longest cell, with <eot>
    check_completion_budget(task, ByteTokenizer(), need)
    with pytest.raises(ConfigError, match=f"'add 12' \\({need} tokens with <eot>\\)"):
        check_completion_budget(task, ByteTokenizer(), need - 1)

    class LongReference(FirstDigitTask):
        def reference_solution(self, problem):
            return "1+1+0=02\nA:2\n"

    cfg = _toy_config(tmp_path)  # max_new_tokens=1
    with pytest.raises(ConfigError, match="max_new_tokens.*14 tokens with <eot>"):
        train_rl(cfg, task=LongReference())
    assert not (Path(cfg.run_dir) / "checkpoints").exists()


def test_carried_statistics_follow_the_cells_of_the_sources_own_task(
    arithmetic_dir, tmp_path, monkeypatch
):
    """A run that allows longer numbers than its RL source has more cells, in another order:
    the source's arrays are named by the task its own config builds."""
    from minigpt_jax import init_from
    from minigpt_jax.errors import ConfigError
    from minigpt_jax.rl import _carry_proposer_stats
    from minigpt_jax.tasks import load_task

    narrow = load_task("arithmetic", str(arithmetic_dir), {"max_digits": "+:4"})
    wide = load_task("arithmetic", str(arithmetic_dir), {"max_digits": "+:6"})
    n = len(narrow.cells())
    stats = {"attempts": np.arange(1, n + 1, dtype=np.float32),
             "successes": np.arange(n, dtype=np.float32) / 2}
    source_cfg = {"task": "arithmetic", "data_dir": str(arithmetic_dir),
                  "task_options": {"answer_weight": 1.0, "process_weight": 0.0,
                                   "max_digits": "+:4"}}
    monkeypatch.setattr(init_from, "proposer_stats_from", lambda spec: (source_cfg, stats))
    cfg = add_rl_keys(tiny_config(arithmetic_dir, tmp_path / "run", tokenizer="byte"))
    cfg.task_options.max_digits, cfg.init_from = "+:6", "checkpoint:source@1"
    proposer = Proposer(wide, "frontier")
    _carry_proposer_stats(cfg, wide, proposer)
    wide_names = [wide.cell_name(c) for c in wide.cells()]
    for j, cell in enumerate(narrow.cells()):
        i = wide_names.index(narrow.cell_name(cell))
        assert proposer.stats["attempts"][i] == stats["attempts"][j]
        assert proposer.stats["successes"][i] == stats["successes"][j]
    longer = [wide_names.index(name) for name in ("add 5", "add 6")]
    assert not proposer.stats["attempts"][longer].any()
    # a source whose own config no longer builds its cells is refused, naming the key
    source_cfg["data_dir"] = str(tmp_path / "gone")
    with pytest.raises(ConfigError, match="proposer_init.*no longer build"):
        _carry_proposer_stats(cfg, wide, Proposer(wide, "frontier"))
    source_cfg["data_dir"], source_cfg["task_options"]["max_digits"] = str(arithmetic_dir), "+:5"
    with pytest.raises(ConfigError, match=f"proposer_init.*count {n} cells.*now has {n + 1}"):
        _carry_proposer_stats(cfg, wide, Proposer(wide, "frontier"))


def test_arithmetic_task_refuses_bad_options(arithmetic_dir, tmp_path):
    from minigpt_jax.errors import ConfigError, DataError
    from minigpt_jax.tasks import load_task

    with pytest.raises(ConfigError, match="max_digits"):
        load_task("arithmetic", str(arithmetic_dir), {"max_digits": "+8"})
    with pytest.raises(ConfigError, match="task"):
        load_task("chess", str(arithmetic_dir))
    with pytest.raises(ConfigError, match="process_weight"):
        load_task("arithmetic", str(arithmetic_dir), {"process_weight": -1.0})
    with pytest.raises(ConfigError, match="answer_weight"):
        load_task("arithmetic", str(arithmetic_dir), {"answer_weight": 0.0})
    with pytest.raises(DataError, match="not arithmetic data"):
        load_task("arithmetic", str(write_random_shards(tmp_path / "d")))
    damaged = tmp_path / "damaged"
    shutil.copytree(arithmetic_dir, damaged)
    manifest = json.loads((damaged / "manifest.json").read_text())
    manifest["task"]["mixture"]["layout"] = "diagonal"
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest.json: task.mixture is not a mixture"):
        load_task("arithmetic", str(damaged))


# --- the loop on a toy task -----------------------------------------------------------------


class FirstDigitTask:
    """Reward 1 when the first new character is a decimal digit: the optimum (always a digit)
    is known, and a random byte-level policy finds it about 4% of the time."""

    name = "first_digit"

    def cells(self):
        return ["q"]

    def trained_cells(self):
        return ["q"]

    def prerequisite(self, cell):
        return None

    def problem(self, rng, cell):
        return rng.choice("abcdefgh")

    def prompt(self, problem):
        return problem + "?\n"

    def solved(self, problem, completion):
        return completion[:1].isdigit()

    reward = solved
    verify = solved

    def right_lines(self, problem, completion):
        return int(self.solved(problem, completion))  # the one line is right when it is a digit

    def cell_of(self, problem):
        return "q"

    def cell_name(self, cell):
        return cell

    def heldout(self):
        return list("xyz")


def _toy_config(tmp_path: Path, **overrides):
    data = write_random_shards(tmp_path / "data")
    c = add_rl_keys(tiny_config(data, tmp_path / "run", tokenizer="byte"))
    c.total_steps, c.warmup_steps, c.lr, c.min_lr = 30, 0, 3e-2, 3e-2
    c.prompts_per_step, c.group_size, c.max_new_tokens = 4, 8, 1
    c.eval_every, c.eval_per_cell, c.log_every, c.checkpoint_every = 10, 3, 1, 0
    c.proposer = "frontier"
    for k, v in overrides.items():
        c[k] = v
    return c


def _saved_state(run_dir: str, step: int) -> dict:
    """A run's saved state at `step` as host arrays, as Orbax restores it without a target."""
    from minigpt_jax.checkpoint import RunCheckpoints

    ckpts = RunCheckpoints(run_dir, read_only=True)
    try:
        return ckpts.manager.restore(step)["state"]
    finally:
        ckpts.close()


def test_rl_reaches_a_known_optimum_on_a_toy_task(tmp_path, monkeypatch, capsys):
    from minigpt_jax.rl import train_rl

    # the host-memory hint is asked with the run's backend and shown once, as in train
    backends = []
    monkeypatch.setattr("minigpt_jax.train.hugepage_hint", lambda b: backends.append(b) or "HINT")
    cfg = _toy_config(tmp_path)
    last = train_rl(cfg, task=FirstDigitTask())
    assert backends == [jax.default_backend()] and capsys.readouterr().out.count("HINT") == 1
    records = read_metrics(Path(cfg.run_dir))
    assert records[0]["step"] == 0 and records[0]["heldout_greedy"] == 0.0
    first_rewards = np.mean([r["reward"] for r in records[1:6]])
    assert first_rewards < 0.3
    assert last["heldout_greedy"] == 1.0  # greedy answers a digit to every held-out prompt
    assert np.mean([r["reward"] for r in records[-5:]]) > 0.9


@pytest.mark.parametrize(
    ("credit", "metric"), [("line_credit", "right_lines"), ("solved_credit", "reward")]
)
def test_rl_learns_from_one_credit_alone(tmp_path, credit, metric):
    """With no outcome advantage at all (outcome_credit 0), the per-line credit alone, or
    reinforcing the solved samples alone (rejection-sampling fine-tuning), must carry the
    learning to the same optimum."""
    from minigpt_jax.rl import train_rl

    cfg = _toy_config(tmp_path, **{credit: 1.0, "outcome_credit": 0.0})
    last = train_rl(cfg, task=FirstDigitTask())
    records = read_metrics(Path(cfg.run_dir))
    assert np.mean([r[metric] for r in records[1:6]]) < 0.3
    assert last["heldout_greedy"] == 1.0
    assert np.mean([r[metric] for r in records[-5:]]) > 0.9


class SevenVerifiedTask(FirstDigitTask):
    """Any digit is a right answer, but only "7" passes the verifier (right steps)."""

    def verify(self, problem, completion):
        return completion[:1] == "7"

    reward = verify  # logged: how often the policy writes the verified answer


def test_solved_credit_reinforces_verified_samples_not_merely_right_answers(tmp_path):
    """A right answer reached through wrong steps, reinforced, teaches the wrong steps: solved
    credit counts only what the verifier accepts, so the policy converges on "7"."""
    from minigpt_jax.rl import train_rl

    cfg = _toy_config(tmp_path, solved_credit=1.0, outcome_credit=0.0)
    train_rl(cfg, task=SevenVerifiedTask())
    rewards = [r["reward"] for r in read_metrics(Path(cfg.run_dir))[1:]]
    assert np.mean(rewards[:5]) < 0.1
    # (at this toy lr, Adam later wanders off the saturated optimum: the peak is the test)
    assert max(np.convolve(rewards, np.ones(3) / 3, mode="valid")) > 0.9


def test_rollouts_given_room_as_they_need_it_learn_and_resume_exactly(tmp_path, monkeypatch):
    """`rollout_first_tokens` samples in stages (generate.sample_growing): the loop still finds
    the toy's optimum, its rows run past the first stage, and a resumed run redraws the same
    rollouts."""
    from minigpt_jax import rl
    from minigpt_jax.rl import train_rl

    rooms = []  # the first room of every sampling call: the key must reach rollouts and checks

    def spy(*args, first_tokens, **kwargs):
        rooms.append(first_tokens)
        return sample_growing(*args, first_tokens=first_tokens, **kwargs)

    sample_growing = rl.sample_growing
    monkeypatch.setattr(rl, "sample_growing", spy)
    cfg = _toy_config(tmp_path / "a", rollout_first_tokens=1, max_new_tokens=3,
                      checkpoint_every=15)
    last = train_rl(cfg, task=FirstDigitTask())
    records = read_metrics(Path(cfg.run_dir))
    assert len(rooms) > cfg.total_steps and set(rooms) == {1}
    assert last["heldout_greedy"] == 1.0
    assert np.mean([r["reward"] for r in records[-5:]]) > 0.9
    assert max(r["response_tokens"] for r in records[1:]) > 1  # rows went on past stage one

    halves = _toy_config(tmp_path / "b", rollout_first_tokens=1, max_new_tokens=3,
                         total_steps=15, checkpoint_every=15)
    train_rl(halves, task=FirstDigitTask())
    halves.unlock()
    halves.total_steps = 30
    train_rl(halves, task=FirstDigitTask())
    resumed = read_metrics(Path(halves.run_dir))
    assert [r["reward"] for r in resumed if r["step"] > 15] == [
        r["reward"] for r in records if r["step"] > 15
    ]


def test_greedy_branch_resamples_the_first_wrong_line_from_the_right_ones(arithmetic_dir):
    """The state a failed greedy solution is branched from: the lines it got right, each ended by
    the newline it wrote; a resampled line is cut at its own newline (or end-of-text), and the
    task's line checker scores it against the line the solution got wrong."""
    from minigpt_jax.rl import failure_state, first_line, line_reward
    from minigpt_jax.tasks import load_task
    from minigpt_jax.tasks.arithmetic import Problem

    task = load_task("arithmetic", str(arithmetic_dir))
    q = Problem("/", 3471, 6)
    lines = task.reference_solution(q).split("\n")
    assert len(lines) >= 5 and lines[2][0].isdigit()
    wrong2 = lines[2].replace(lines[2][0], str((int(lines[2][0]) + 1) % 10), 1)
    completion = "\n".join([lines[0], lines[1], wrong2, *lines[3:]])
    prefix, right = failure_state(task, q, completion)
    assert (prefix, right) == (f"{lines[0]}\n{lines[1]}\n", 2)
    assert line_reward(task, q, prefix, right, lines[2] + "\n", ended=False) == 1.0
    assert line_reward(task, q, prefix, right, wrong2 + "\n", ended=False) == 0.0  # greedy's
    # a right step line, then end-of-text: the solution stops halfway, so it is not rewarded
    assert line_reward(task, q, prefix, right, lines[2], ended=True) == 0.0
    done = "".join(f"{line}\n" for line in lines[:-2])  # all but the answer line (and the "")
    assert lines[-2].startswith("A:") and lines[-1] == ""
    assert line_reward(task, q, done, len(lines) - 2, lines[-2], ended=True) == 1.0
    assert failure_state(task, q, "9" + completion) == ("", 0)  # wrong from the first line
    # a right line the solution never ended (cut off): the state stops before it
    assert failure_state(task, q, f"{lines[0]}\n{lines[1]}") == (f"{lines[0]}\n", 1)

    assert first_line([5, 6, 10, 7], [0, 0, 1, 0], room=8) == ([5, 6, 10], False)
    assert first_line([5, 6], [0, 0], room=8) == ([5, 6], True)  # stopped early: end-of-text
    assert first_line([5, 6, 7], [0, 0, 0], room=3) == ([5, 6, 7], False)  # out of room


def test_greedy_branch_reaches_the_toy_optimum_and_resumes_exactly(tmp_path):
    """`rollout_mode="greedy_branch"` on the toy: greedy's failures are branched at their first
    (only) line, the loop reaches the optimum, greedy stops failing, and a resumed run redraws
    the same greedy rollouts and branches."""
    from minigpt_jax.rl import train_rl

    mode = {"rollout_mode": "greedy_branch", "branch_tokens": 1}
    cfg = _toy_config(tmp_path / "a", checkpoint_every=15, **mode)
    last = train_rl(cfg, task=FirstDigitTask())
    records = read_metrics(Path(cfg.run_dir))[1:]
    assert records[0]["branch_states"] == 1.0 and records[0]["pass@1"] == 0.0
    assert np.mean([r.get("branch_right", 0) for r in records[:5]]) < 0.3
    assert last["heldout_greedy"] == 1.0
    assert np.mean([r["pass@1"] for r in records[-5:]]) == 1.0  # greedy's own batch too
    assert records[-1]["branch_states"] == 0.0 and "branch_right" not in records[-1]

    halves = _toy_config(tmp_path / "b", total_steps=15, checkpoint_every=15, **mode)
    train_rl(halves, task=FirstDigitTask())
    halves.unlock()
    halves.total_steps = 30
    train_rl(halves, task=FirstDigitTask())
    keys = ("pass@1", "branch_states", "branch_right", "loss")
    assert [[r.get(k) for k in keys] for r in read_metrics(Path(halves.run_dir)) if r["step"] > 15
            ] == [[r.get(k) for k in keys] for r in records if r["step"] > 15]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rollout_mode": "beam"}, "rollout_mode: 'beam'"),
        ({"rollout_mode": "greedy_branch", "branch_tokens": 0}, "branch_tokens: 0"),
        ({"rollout_mode": "greedy_branch", "line_credit": 1.0}, "line_credit: 1.0 with rollout"),
        ({"rollout_mode": "greedy_branch", "solved_credit": 1.0}, "solved_credit: 1.0 with"),
        ({"rollout_mode": "greedy_branch", "outcome_credit": 0.5}, "outcome_credit: 0.5 with"),
    ],
)
def test_greedy_branch_config_errors_name_the_key(tmp_path, overrides, message):
    from minigpt_jax.errors import ConfigError
    from minigpt_jax.rl import train_rl

    cfg = _toy_config(tmp_path, **overrides)
    with pytest.raises(ConfigError, match=message):
        train_rl(cfg, task=FirstDigitTask())
    assert not (Path(cfg.run_dir) / "checkpoints").exists()


def test_skipping_rows_without_signal_takes_the_same_steps(tmp_path):
    """The loop with and without `skip_no_signal` on the same rollouts: the same parameters
    after a few steps (to float rounding), and fewer rows updated on where groups agree."""
    from minigpt_jax.rl import train_rl

    runs = {}
    for skip in (False, True):
        cfg = _toy_config(tmp_path / str(skip), total_steps=4, eval_every=0, checkpoint_every=4,
                          skip_no_signal=skip, group_size=4, max_new_tokens=2)
        train_rl(cfg, task=FirstDigitTask())
        runs[skip] = _saved_state(cfg.run_dir, 4)["params"], read_metrics(Path(cfg.run_dir))
    (full, full_log), (skipped, skip_log) = runs[False], runs[True]
    for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(skipped), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
    assert [r["reward"] for r in full_log] == [r["reward"] for r in skip_log]
    assert "signal_rows" not in full_log[0]
    assert min(r["signal_rows"] for r in skip_log) < 1.0  # the toy's early groups are all wrong


def test_rl_resume_is_bit_exact_and_keeps_the_proposer_statistics(tmp_path):
    from minigpt_jax.rl import train_rl

    straight = _toy_config(tmp_path / "a", total_steps=6, eval_every=0, checkpoint_every=6)
    train_rl(straight, task=FirstDigitTask())
    halves = _toy_config(tmp_path / "b", total_steps=3, eval_every=0, checkpoint_every=3)
    train_rl(halves, task=FirstDigitTask())
    halves.unlock()
    halves.total_steps = 6
    train_rl(halves, task=FirstDigitTask())

    a, b = _saved_state(straight.run_dir, 6), _saved_state(halves.run_dir, 6)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert float(np.asarray(a["proposer"]["attempts"])[0]) > 0
    ra, rb = read_metrics(Path(straight.run_dir)), read_metrics(Path(halves.run_dir))
    assert [r["reward"] for r in ra] == [r["reward"] for r in rb]


def test_rl_checkpoint_loads_for_inference(tmp_path):
    from minigpt_jax.checkpoint import load_params
    from minigpt_jax.rl import train_rl

    cfg = _toy_config(tmp_path, total_steps=2, eval_every=0)
    train_rl(cfg, task=FirstDigitTask())
    params, record = load_params(cfg.run_dir)
    assert record["step"] == 2 and record["tokenizer"]["name"] == "byte"
    assert record["model"].n_layer == 2 and "wte" in params


def test_init_adam_scale_takes_the_checkpoints_second_moments_and_zero_first_moments(
    tmp_path, monkeypatch
):
    import optax

    from minigpt_jax import init_from
    from minigpt_jax.init_from import pin_step
    from minigpt_jax.rl import setup, train_rl

    source = _toy_config(tmp_path / "a", total_steps=3, eval_every=0)
    train_rl(source, task=FirstDigitTask())
    saved = _saved_state(source.run_dir, 3)["opt_state"]
    saved_nu = [np.asarray(x) for x in jax.tree.leaves(saved[1][0]["nu"])]
    assert any(np.abs(x).max() > 0 for x in saved_nu)
    # Both reads of the source are pinned to the step that is latest when the run starts.
    assert pin_step(f"checkpoint:{source.run_dir}") == f"checkpoint:{source.run_dir}@3"
    assert pin_step(f"checkpoint:{source.run_dir}@3") == f"checkpoint:{source.run_dir}@3"
    assert pin_step("scratch") == "scratch"

    def adam_state(keep):
        cfg = _toy_config(tmp_path / f"b{keep}", init_from=f"checkpoint:{source.run_dir}",
                          init_adam_scale=keep, proposer_init="init_from",
                          data_dir=source.data_dir)
        with monkeypatch.context() as m:  # record the spec each read is given
            for name in ("proposer_stats_from", "load_init_params", "adam_scale_from"):
                m.setattr(init_from, name, recording(name, getattr(init_from, name)))
            run = setup(cfg, FirstDigitTask())
        run.ckpts.close()
        is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
        return next(s for s in jax.tree.leaves(run.state.opt_state, is_leaf=is_adam)
                    if is_adam(s))

    reads = []

    def recording(name, fn):
        def wrapped(spec, *args, **kwargs):
            reads.append((name, spec))
            return fn(spec, *args, **kwargs)
        return wrapped

    kept = adam_state(True)
    pinned = f"checkpoint:{source.run_dir}@3"
    assert reads == [("proposer_stats_from", pinned), ("load_init_params", pinned),
                     ("adam_scale_from", pinned)]
    fresh = adam_state(False)
    assert int(kept.count) == 3 and int(fresh.count) == 0
    for got, want in zip(jax.tree.leaves(kept.nu), saved_nu, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(kept.mu))
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(fresh.nu))


def test_a_resumed_kl_run_keeps_the_reference_it_started_from(tmp_path, monkeypatch):
    """The source may save newer checkpoints while an RL run from its "latest" is under way: the
    run records the step it started from, and a resume reads its KL reference from that step."""
    import json

    from minigpt_jax import init_from
    from minigpt_jax.rl import train_rl

    source = _toy_config(tmp_path / "a", total_steps=3, eval_every=0)
    train_rl(source, task=FirstDigitTask())
    run = _toy_config(tmp_path / "b", init_from=f"checkpoint:{source.run_dir}", kl_coef=0.1,
                      total_steps=2, eval_every=0, checkpoint_every=2)
    train_rl(run, task=FirstDigitTask())
    pinned = f"checkpoint:{source.run_dir}@3"
    assert json.loads((Path(run.run_dir) / "config.json").read_text())["init_from"] == pinned
    source.unlock()
    source.total_steps = 5
    train_rl(source, task=FirstDigitTask())  # the source's latest is now step 5
    reads = []
    load = init_from.load_init_params
    monkeypatch.setattr(init_from, "load_init_params",
                        lambda spec, *a, **k: reads.append(spec) or load(spec, *a, **k))
    run.unlock()
    run.total_steps = 3
    train_rl(run, task=FirstDigitTask())
    assert reads == [pinned]


def test_init_adam_scale_refuses_a_checkpoint_without_adam_moments(tmp_path):
    """An SGD run's optimizer state has the same length of chain but no moments: a partial
    restore would fill them with placeholders, so the refusal must come from the check."""
    from minigpt_jax.errors import ConfigError
    from minigpt_jax.rl import setup, train_rl

    source = _toy_config(tmp_path / "a", total_steps=2, eval_every=0, optimizer="sgd")
    train_rl(source, task=FirstDigitTask())
    cfg = _toy_config(tmp_path / "b", init_from=f"checkpoint:{source.run_dir}",
                      init_adam_scale=True)
    with pytest.raises(ConfigError, match="init_adam_scale.*does not fit"):
        setup(cfg, FirstDigitTask())
    cfg.optimizer = "sgd"  # this run's own optimizer: refused before any checkpoint is read
    with pytest.raises(ConfigError, match="init_adam_scale.*needs optimizer adamw"):
        setup(cfg, FirstDigitTask())


def test_a_fresh_run_starts_its_proposer_where_its_rl_source_stopped(tmp_path):
    from minigpt_jax.errors import ConfigError
    from minigpt_jax.rl import setup, train_rl
    from minigpt_jax.train import train_and_evaluate

    source = _toy_config(tmp_path / "a", total_steps=6, eval_every=0, checkpoint_every=6)
    train_rl(source, task=FirstDigitTask())
    saved = _saved_state(source.run_dir, 6)["proposer"]
    assert float(np.asarray(saved["attempts"])[0]) > 0
    started = {}
    for init in ("init_from", "prior"):
        cfg = _toy_config(tmp_path / init, init_from=f"checkpoint:{source.run_dir}",
                          proposer_init=init, total_steps=2, eval_every=0, checkpoint_every=2,
                          data_dir=source.data_dir)  # the source's task: the toy's one cell
        run = setup(cfg, FirstDigitTask())
        run.ckpts.close()
        started[init] = run.proposer.stats
    for key in ("attempts", "successes"):
        np.testing.assert_array_equal(started["init_from"][key], np.asarray(saved[key]))
        assert not started["prior"][key].any()
    # a resumed run takes its own checkpoint's statistics and does not read the source again
    # (which may be gone by then)
    train_rl(cfg, task=FirstDigitTask())  # the "prior" run, to step 2
    own = _saved_state(cfg.run_dir, 2)["proposer"]
    shutil.rmtree(source.run_dir)
    cfg.unlock()
    cfg.proposer_init, cfg.total_steps = "init_from", 3
    run = setup(cfg, FirstDigitTask())
    run.ckpts.close()
    for key in ("attempts", "successes"):
        np.testing.assert_array_equal(run.proposer.stats[key], np.asarray(own[key]))
        assert not np.array_equal(np.asarray(own[key]), np.asarray(saved[key]))
    # a supervised checkpoint has no statistics to carry: refused, naming the key
    sft = tiny_config(write_random_shards(tmp_path / "sft_data"), tmp_path / "sft",
                      total_steps=2, eval_every=0, tokenizer="byte")
    train_and_evaluate(sft)
    refused = _toy_config(tmp_path / "c", init_from=f"checkpoint:{sft.run_dir}",
                          proposer_init="init_from")
    with pytest.raises(ConfigError, match="proposer_init.*holds no proposer statistics"):
        train_rl(refused, task=FirstDigitTask())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("init_adam_scale", True, "init_adam_scale"),  # init_from is scratch: nothing to read
        ("group_size", 1, "group_size"),
        ("temperature", 0.0, "temperature"),
        ("rollout_first_tokens", -1, "rollout_first_tokens"),
        ("proposer", "best", "proposer"),
        ("kl_coef", 0.1, "kl_coef"),  # no reference policy: init_from is scratch
        ("line_credit", -1.0, "line_credit"),
        ("outcome_credit", float("nan"), "outcome_credit"),
        ("outcome_credit", 0.0, "every advantage would be 0"),  # and the other credits 0
        ("solved_credit", float("inf"), "solved_credit"),
        ("negative_weight", -0.5, "negative_weight"),
        ("proposer_cells", "q,add 20", r"proposer_cells.*\['add 20'\]"),
        ("proposer_cells", " , ", "proposer_cells: ' , ' names no cell"),
        ("proposer_init", "latest", "proposer_init: 'latest'"),
        ("proposer_init", "init_from", "proposer_init.*set init_from=checkpoint"),  # scratch
    ],
)
def test_rl_config_errors_name_the_key(tmp_path, key, value, message):
    from minigpt_jax.errors import ConfigError
    from minigpt_jax.rl import train_rl

    cfg = _toy_config(tmp_path, **{key: value})
    with pytest.raises(ConfigError, match=message):
        train_rl(cfg, task=FirstDigitTask())
    assert not (Path(cfg.run_dir) / "checkpoints").exists()


def test_named_cells_need_a_proposer_that_draws_cells(tmp_path):
    from minigpt_jax.errors import ConfigError
    from minigpt_jax.rl import train_rl

    cfg = _toy_config(tmp_path, proposer="mixture", proposer_cells="q")
    with pytest.raises(ConfigError, match="proposer_cells: proposer='mixture'.*'uniform' or"):
        train_rl(cfg, task=FirstDigitTask())
