"""benchmarks/fidelity.py: the statistics, the checkpoint table, the log reading and the flag translation.

Synthetic inputs with hand-computed answers; no JAX, no training.
"""

from __future__ import annotations

import math

import pytest

from benchmarks import fidelity as fd


# Two-sided 95% Student t quantiles from published tables (df 50/17: Welch's df of the case below).
@pytest.mark.parametrize(
    "df,q",
    [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105), (10, 2.228138852), (50 / 17, 3.218758615)],
)
def test_t_quantile_matches_tables(df, q):
    # Simpson with 2000 panels on the smooth density: CDF error < 1e-11, quantile error well under 1e-8.
    assert fd.t_quantile(0.975, df) == pytest.approx(q, abs=1e-8)
    assert fd.t_cdf(-q, df) == pytest.approx(0.025, abs=1e-10)


def test_compare_welch_by_hand():
    # ours mean 2, std 1; theirs mean 4, std 2; SE^2 = 1/3 + 4/3; df = (5/3)^2 / ((1/9)/2 + (16/9)/2) = 50/17.
    r = fd.compare([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert (r["ours_mean"], r["ours_std"], r["theirs_mean"], r["theirs_std"]) == (2.0, 1.0, 4.0, 2.0)
    assert r["diff"] == -2.0
    assert r["se"] == pytest.approx(math.sqrt(5 / 3), rel=1e-15)
    assert r["df"] == pytest.approx(50 / 17, rel=1e-14)
    assert r["within"] is True  # 2 <= 3.2188 * 1.291 = 4.155
    # Tight seeds, a difference of 1: SE = sqrt(2 * 0.01 / 3) = 0.0816, df = 4, bound 0.2267.
    r = fd.compare([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert r["df"] == pytest.approx(4.0, rel=1e-12)
    assert r["within"] is False
    # No spread at all: within only when equal.
    assert fd.compare([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])["within"] is True
    assert fd.compare([0.0, 0.0, 0.0], [0.02, 0.02, 0.02])["within"] is False


def test_value_at_window_and_exact():
    series = [[100, 1.0], [200, 3.0], [300, 5.0], [400, 7.0]]
    assert fd.value_at(series, 400, 200) == 6.0  # steps 300 and 400
    assert fd.value_at(series, 400, 0) == 7.0
    assert fd.value_at(series, 250, 0) is None
    assert fd.value_at(series, 300, 300) == 3.0  # (0, 300]


def _run(side, seed, loss, success, extra=None):
    train = {"critic/critic_loss": [[100, loss], [200, loss + 1.0]]}
    if extra:
        train.update(extra)
    return {"case": {"agent": "fidec", "side": side, "seed": seed}, "train": train,
            "eval": {"evaluation/success": [[1, 0.0], [200, success]]}}  # fmt: skip


def test_checkpoint_table_shared_metrics_only():
    runs = [
        _run("ours", 0, 1.0, 0.2, extra={"actor/only_ours": [[200, 9.0]]}),
        _run("ours", 1, 2.0, 0.4),
        _run("ours", 2, 3.0, 0.6),
        _run("theirs", 0, 10.0, 0.2),
        _run("theirs", 1, 11.0, 0.4),
        _run("theirs", 2, 12.0, 0.6),
    ]
    table = fd.checkpoint_table(runs, "fidec", [200], window=200)
    by = {r["metric"]: r for r in table}
    assert set(by) == {"critic/critic_loss", "evaluation/success"}
    # Per seed: mean of steps 100 and 200 = loss + 0.5.
    c = by["critic/critic_loss"]
    assert (c["ours_mean"], c["theirs_mean"], c["diff"]) == (2.5, 11.5, -9.0)
    assert c["ours_std"] == c["theirs_std"] == 1.0
    assert c["within"] is False
    s = by["evaluation/success"]
    assert s["ours_mean"] == pytest.approx(0.4) and s["diff"] == 0.0 and s["within"] is True
    md = fd.markdown_table(table)
    assert "| critic/critic_loss | 200 | 2.5 ± 1 (n=3) | 11.5 ± 1 (n=3) | -9 |" in md
    assert "**no**" in md and "| yes |" in md
    assert fd.outside_summary(table) == (
        "1 of 2 (metric, checkpoint) pairs of the 2 shared metrics are within spread; "
        "outside: `critic/critic_loss`@200."
    )


def test_read_csv_their_prefix_and_gaps(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text(
        "training/critic/critic_loss,validation/actor/q,time/total_time,step\n1.5,,3.0,10\n2.5,-4,6.0,20\n"
    )
    s = fd.read_csv(p)
    assert s["critic/critic_loss"] == [[10, 1.5], [20, 2.5]]
    assert s["validation/actor/q"] == [[20, -4.0]]
    run = fd.load_run("ours", tmp_path)
    assert "time/total_time" not in run["train"] and run["eval"] == {}


def test_translate_flags_and_refusals():
    train = {"steps": 1000, "log_interval": 100, "eval_interval": 500, "eval_episodes": 5, "batch_size": 256,
             "action_clip_eps": 1e-5, "eval_sampling": "default", "eval_at_start": True, "validation": True,
             "dtype": "float32"}  # fmt: skip
    agent = {"lr": 3e-4, "actor_hidden_dims": [64, 64], "fisher_t": 0.9, "num_critics": 2, "adam_eps": 1e-8,
             "fused_gelu": True}  # fmt: skip
    theirs = {"lr": 3e-4, "actor_hidden_dims": [512, 512, 512, 512], "fisher_t": 0.95, "batch_size": 256,
              "encoder": None}  # fmt: skip
    flags, rec = fd.translate(train, agent, theirs)
    assert (
        "--offline_steps=1000" in flags and "--eval_episodes=5" in flags and "--save_interval=1001" in flags
    )
    assert "--agent.actor_hidden_dims=(64,64)" in flags and "--agent.fisher_t=0.9" in flags
    assert not any(f.startswith("--agent.lr") or f.startswith("--agent.batch_size") for f in flags)
    assert rec["theirs_only"] == {"encoder": None} and "fused_gelu" in rec["ours_only"]
    assert fd.flag_value([7]) == "(7,)"
    with pytest.raises(SystemExit, match="num_critics"):
        fd.translate(train, {**agent, "num_critics": 3}, theirs)
    with pytest.raises(SystemExit, match="eval_sampling"):
        fd.translate({**train, "eval_sampling": "best_of_n"}, agent, theirs)


def test_replace_section_keeps_the_rest():
    text = f"# A\nkeep\n{fd.BEGIN}\nold\n{fd.END}\ntail\n"
    new = fd.replace_section(text, "new table")
    assert new == f"# A\nkeep\n{fd.BEGIN}\nnew table\n{fd.END}\ntail\n"
    assert fd.replace_section("# A\n", "x").endswith(f"{fd.BEGIN}\nx\n{fd.END}\n")
    assert fd.parse_seeds("0-2,5") == [0, 1, 2, 5]
