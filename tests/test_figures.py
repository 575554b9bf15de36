"""The figures package on a small synthetic results store: every figure is drawn or reported missing, the CLI
works, and the claims table gives the verdicts crafted records call for."""

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from dictionary_learning_aligned.alignment import summarize_scores
from dictionary_learning_aligned.records import group_id, record_id, write_record
from figures import FIGURES, claims_table, format_claims, load_records, render_all
from figures.__main__ import main
from figures.claims import claims_header

ROOT = Path(__file__).resolve().parents[1]
F = 64  # features per synthetic dictionary
SPARSITY = {"relu": ("l1_penalty", (0.02, 0.08)), "topk": ("k", (8, 32)), "batchtopk": ("k", (8, 32)),
            "panneal": ("initial_sparsity_penalty", (0.02, 0.08))}


def make_record(arch, alignment, sval, seed, *, experiment="main", dict_size=F, l0=None, ce=None, alive=None,
                mcs=None, bc_bimodal=True, train_tokens=1_000_000, **extra):
    """A schema-1 record with plausible numbers (overridable) and per-feature arrays of length ``F``."""
    rng = np.random.default_rng(zlib.crc32(repr((arch, alignment, sval, seed, experiment)).encode()))
    name, _ = SPARSITY[arch]
    sparsity = {"name": name, "value": sval}
    if alignment is None:  # bimodal (or unimodal) scores
        scores = (np.where(rng.random(F) < 0.5, rng.normal(0.2, 0.05, F), rng.normal(0.9, 0.05, F))
                  if bc_bimodal else rng.normal(0.7, 0.05, F))
    else:
        scores = np.ones(F)
    if l0 is None:
        l0 = float(sval) if name == "k" else 40 - 300 * sval + (8 if alignment else 0)
    l0 += 0.3 * seed
    ce = ce if ce is not None else 0.8 + 0.003 * l0 - (0.01 if alignment else 0)
    alive = alive if alive is not None else (1.0 if alignment else 0.8)
    mcs = mcs if mcs is not None else (0.35 if alignment else 0.3)
    rec = {
        "schema": 1, "id": record_id(experiment, arch, alignment, dict_size, sparsity, seed),
        "group": group_id(experiment, arch, alignment, dict_size, sparsity), "experiment": experiment,
        "scale": "smoke", "model": "smollm2-135m-instruct", "paper_model": "EleutherAI/pythia-160m-deduped",
        "offline_note": "offline substitute: SmolLM2-135M-Instruct layer 12 on the bundled corpus instead of "
                        "EleutherAI/pythia-160m-deduped layer 8 on monology/pile-uncopyrighted",
        "layer": 12, "corpus": None, "train_tokens": train_tokens, "arch": arch, "alignment": alignment,
        "dict_size": dict_size, "sparsity": sparsity, "seed": seed, "trainer": {},
        "metrics": {"l0": l0, "frac_recovered": ce, "frac_variance_explained": ce - 0.05, "mse": 1.0 - ce,
                    "cossim": ce, "frac_alive": alive},
        "alignment_scores": summarize_scores(torch.tensor(scores, dtype=torch.float32)),
        "per_feature": {"alignment_score": scores.tolist(),
                        "max_cos_other_seeds": np.clip(0.3 + 0.5 * scores + rng.normal(0, 0.1, F), 0, 1).tolist(),
                        "fired": [True] * F},
        "stability": {"mcs": mcs, "frac_above_0.7": mcs / 2, "frac_above_0.9": mcs / 4,
                      "hungarian_mean_cos": mcs, "n_runs": 2},
        "paths": {"dictionary": "dicts/x"}, "command": "test", "versions": {}, "created": "2026-01-01",
    }
    rec.update(extra)
    return rec


def grid(archs=("relu", "topk"), alignments=(None, "project"), seeds=(0, 1), **kw):
    return [make_record(a, al, v, s, **kw) for a in archs for al in alignments for v in SPARSITY[a][1]
            for s in seeds]


@pytest.fixture
def store(tmp_path):
    d = tmp_path / "store"
    for r in grid():
        write_record(d, r)
    return d


EXPECT_WRITTEN = {"fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig10", "fig11", "fig13"}


def test_every_figure_drawn_or_reported_missing(store, tmp_path):
    out = tmp_path / "figs"
    results = {r.name: r for r in render_all(store, out)}
    assert set(results) == set(FIGURES) == {f"fig{i}" for i in range(1, 21)}
    written = {n for n, r in results.items() if r.written}
    assert written == EXPECT_WRITTEN, {n: r.missing for n, r in results.items()}
    for n in written:
        for ext in ("pdf", "png"):
            p = out / f"{n}.{ext}"
            assert p.is_file() and p.stat().st_size > 1000, p
        assert (out / f"{n}.pdf").read_bytes()[:5] == b"%PDF-"
    for n in set(FIGURES) - written:
        assert not (out / f"{n}.pdf").exists()
        assert results[n].missing and "FAILED" not in results[n].missing, results[n].missing
    assert "65536" in results["fig17"].missing
    assert "saebench" in results["fig9"].missing and "SCR" in results["fig9"].missing
    assert "'long'" in results["fig19"].missing and "'tying'" in results["fig14"].missing
    assert "fig9: skipped — no SAEBench SCR results" in results["fig9"].report()


def test_model_and_offline_note_are_stated(store):
    from figures.paper import _annotate
    d = FIGURES["fig2"].draw(load_records(store), store)
    _annotate(d, "fig2", FIGURES["fig2"].title)
    title, caption = d.fig.get_suptitle(), d.fig.get_supxlabel()
    assert title.startswith("Fig. 2: ReLU")
    assert "smollm2-135m-instruct (offline substitute for EleutherAI/pythia-160m-deduped)" in " ".join(title.split())
    assert max(len(line) for line in title.split("\n")) <= int(d.fig.get_figwidth() * 12.5)  # wrapped to fit
    assert "offline substitute: SmolLM2-135M-Instruct" in caption and "scale smoke" in caption
    assert "error bars: std over seeds" in " ".join(caption.split())


def test_figures_with_optional_data(tmp_path):
    """SAEBench files, tying, sizes and long records make figures 9, 12, 14-16 and 19-20 appear."""
    d = tmp_path / "store"
    recs = grid(archs=("relu", "topk", "batchtopk", "panneal"))
    recs += grid(archs=("relu", "topk"), alignments=(None, "project", "tied"), seeds=(0,), experiment="tying")
    recs += grid(archs=("topk",), seeds=(0,), experiment="sizes", dict_size=16384)
    log = [{"step": s, "frac_variance_explained": 0.5 + s / 400, "dead_fraction_10M": 0.1 / (1 + s)}
           for s in range(0, 101, 20)]
    recs += [make_record("topk", al, 8, 0, experiment="long", train_tokens=10_000_000, training_log=log)
             for al in (None, "project")]
    for r in recs:
        write_record(d, r)
    sb = d / "saebench" / "scr"
    sb.mkdir(parents=True)
    for i, r in enumerate(recs[:16]):
        (sb / f"{i}.json").write_text(json.dumps({"record_id": r["id"], "eval_result_metrics": {
            "scr_metrics": {"scr_metric_threshold_20": 0.1 + 0.01 * i},
            "autointerp": {"autointerp_score": 0.7 + 0.01 * i}}}))
    (sb / "stray.json").write_text(json.dumps({"eval_result_metrics": {}}))
    only = ["fig9", "fig12", "fig14", "fig15", "fig16", "fig17", "fig18", "fig19", "fig20"]
    results = {r.name: r for r in render_all(d, tmp_path / "out", only)}
    missing = {n: r.missing for n, r in results.items() if not r.written}
    assert set(missing) == {"fig17", "fig18"}, missing
    assert all((tmp_path / "out" / f"{n}.pdf").stat().st_size > 1000 for n in set(only) - set(missing))


def test_missing_saebench_is_explained(tmp_path):
    d = tmp_path / "store"
    for r in grid():
        write_record(d, r)
    (d / "saebench").mkdir()
    (d / "saebench" / "x.json").write_text(json.dumps({"sae_name": "nope", "eval_result_metrics": {}}))
    res = FIGURES["fig12"].fn(load_records(d), tmp_path / "o", d)
    assert not res.written and "1 JSON files there" in res.missing


def test_a_missing_figure_names_the_readmes_reproduce_command(tmp_path):
    """A figure without its experiment's records says how to make them with the command the README, ``figures
    ablations`` and ``figures budget`` give (``python -m dictionary_learning_aligned reproduce EXPERIMENT``), not
    the module path ``dictionary_learning_aligned.reproduce``."""
    d = tmp_path / "store"
    for r in grid():
        write_record(d, r)
    res = FIGURES["fig19"].fn(load_records(d), tmp_path / "o", d)
    assert not res.written
    assert "`python -m dictionary_learning_aligned reproduce long --scale smoke|small|paper" in res.missing, res.missing


def test_cli(store, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--results", str(store), "--out", str(out), "--only", "fig2,fig9,fig17"]) == 0
    text = capsys.readouterr().out
    assert "fig2: written" in text and "fig9: skipped" in text and "fig17: skipped" in text
    assert sorted(p.name for p in out.iterdir()) == ["fig2.pdf", "fig2.png"]
    assert main(["--results", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert main(["--results", str(store), "--out", str(out), "--only", "fig9"]) == 1
    with pytest.raises(SystemExit) as e:
        main(["--results", str(store), "--out", str(out), "--only", "fig99"])
    assert e.value.code == 2
    capsys.readouterr()
    assert main(["claims", "--results", str(store), "--format", "text"]) == 0
    text = capsys.readouterr().out
    assert "(a) standard SAEs have bimodal" in text and "[smoke: no verdict (reads supported)]" in text
    assert main(["claims", "--results", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("argv", [["claims", "--format", "text"], ["table"], ["--only", "fig2"]])
def test_cli_exits_quietly_when_its_reader_closes_the_pipe_early(store, tmp_path, argv):
    """``python -m figures claims ... | head -3``: the reader goes away before the output is written. The command
    exits with 141 (128 + SIGPIPE, as a shell reports any writer cut short that way) and no traceback. (argparse's
    --help already ignores a closed stdout and exits 0.)"""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the child writes anything: every write to its stdout fails
    args = [*argv, "--results", str(store)] + (["--out", str(tmp_path / "figs")] if "--only" in argv else [])
    try:
        r = subprocess.run([sys.executable, "-m", "figures", *args], cwd=ROOT, stdout=write_end,
                           stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert r.returncode == 141, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr[-2000:]


def _verdicts(records, claim):
    return {r["arch"]: r["verdict"] for r in claims_table(records) if r["claim"] == claim}


def test_claim_stability_verdicts():
    assert _verdicts(grid(), "d") == {"relu": "supported", "topk": "supported"}
    lower = [make_record(a, al, v, s, mcs=0.2 if al else 0.3) for a, al, v, s in
             [(r["arch"], r["alignment"], r["sparsity"]["value"], r["seed"]) for r in grid()]]
    assert _verdicts(lower, "d") == {"relu": "not supported", "topk": "not supported"}
    single = [dict(r, stability=None) for r in grid(seeds=(0,))]
    assert _verdicts(single, "d") == {"relu": "insufficient data", "topk": "insufficient data"}


def test_claim_stability_reads_mcs_at_equal_l0_for_penalty_architectures_only():
    """(d) compares equal sparsity settings (the verdict); for penalty architectures it also reads the standard
    MCS curve (mean L0 -> MCS, linear, no extrapolation) at each aligned group's L0, without changing the verdict."""
    # standard ReLU: L0 16.15 -> MCS 0.50, L0 34.15 -> 0.80 (seeds 0, 1 add 0.3 * seed to L0)
    recs = [make_record("relu", None, 0.08, s, l0=16.0, mcs=0.50) for s in (0, 1)]
    recs += [make_record("relu", None, 0.02, s, l0=34.0, mcs=0.80) for s in (0, 1)]
    # aligned: at L0 25.15 (inside) MCS 0.70; at the shared setting 0.02 L0 40.15 (outside) MCS 0.60
    recs += [make_record("relu", "project", 0.04, s, l0=25.0, mcs=0.70) for s in (0, 1)]
    recs += [make_record("relu", "project", 0.02, s, l0=40.0, mcs=0.60) for s in (0, 1)]
    row = [r for r in claims_table(recs) if r["claim"] == "d"][0]
    assert row["verdict"] == "not supported"  # equal setting 0.02: 0.600 vs 0.800, as before
    assert row["values"]["higher"] == 0 and len(row["values"]["points"]) == 1
    eq = row["values"]["equal_l0"]
    # by hand: 0.50 + (0.80 - 0.50) * (25.15 - 16.15) / (34.15 - 16.15) = 0.65
    assert [p["standard"] for p in eq["points"]] == [pytest.approx(0.65)]
    assert eq["points"][0]["l0"] == pytest.approx(25.15) and eq["points"][0]["aligned"] == pytest.approx(0.70)
    assert eq["higher"] == 1 and eq["outside"] == [pytest.approx(40.15)]
    assert "at equal L0: L0 25.1: 0.700 vs 0.650 (interpolated)" in row["measured"]
    assert "aligned L0 40.1 outside the standard L0 range [16.1, 34.1], not compared" in row["measured"]
    assert row["measured"].endswith("aligned higher at 1/1")
    # the default grid: ReLU and p-anneal get the reading, TopK and BatchTopK (k fixes L0) do not
    rows = {r["arch"]: r for r in claims_table(grid(archs=("relu", "topk", "batchtopk", "panneal")))
            if r["claim"] == "d"}
    assert {a: r["verdict"] for a, r in rows.items()} == dict.fromkeys(rows, "supported")
    for arch in ("relu", "panneal"):
        assert "at equal L0" in rows[arch]["measured"] and "equal_l0" in rows[arch]["values"]
    for arch in ("topk", "batchtopk"):
        assert "equal L0" not in rows[arch]["measured"] and "equal_l0" not in rows[arch]["values"]
    # one standard setting: nothing to interpolate, said so; the verdict still compares the equal setting
    one = [r for r in recs if not (r["alignment"] is None and r["sparsity"]["value"] == 0.08)]
    row = [r for r in claims_table(one) if r["claim"] == "d"][0]
    assert row["verdict"] == "not supported"
    assert "at equal L0: not compared (1 standard L0 value(s), need 2 to interpolate)" in row["measured"]
    # an aligned L0 just outside the standard range prints with the decimals that show it outside
    near = [make_record("relu", None, v, 0, l0=x, mcs=0.5) for v, x in ((0.08, 16.0), (0.02, 34.0))]
    near += [make_record("relu", "project", v, 0, l0=x, mcs=0.6) for v, x in ((0.08, 15.96), (0.02, 20.0))]
    row = [r for r in claims_table(near) if r["claim"] == "d"][0]
    assert "aligned L0 15.96 outside the standard L0 range [16.00, 34.00], not compared" in row["measured"]


def test_claim_bimodality_and_dead_verdicts():
    assert _verdicts(grid(), "a") == {"relu": "supported", "topk": "supported"}
    assert _verdicts(grid(bc_bimodal=False), "a") == {"relu": "not supported", "topk": "not supported"}
    assert _verdicts(grid(), "b") == {"relu": "supported", "topk": "supported"}
    assert _verdicts(grid(alive=0.9), "b") == {"relu": "not supported", "topk": "not supported"}
    assert _verdicts([r for r in grid() if r["alignment"] is None], "b") == {
        "relu": "insufficient data", "topk": "insufficient data"}


def _dead_at_init(r, frac_dead=0.5):
    """``r`` with a unimodal score distribution among fired features (about 0.9) and ``frac_dead`` of its
    features never fired, at ReLU's initial score 0.1: bimodal over all features only because of the dead."""
    if r["alignment"] is not None:
        return r
    n_dead = int(F * frac_dead)
    rng = np.random.default_rng(r["seed"])
    scores = np.concatenate([np.full(n_dead, 0.1) + rng.normal(0, 0.002, n_dead),
                             rng.normal(0.9, 0.05, F - n_dead)])
    fired = [False] * n_dead + [True] * (F - n_dead)
    return dict(r, alignment_scores=summarize_scores(torch.tensor(scores, dtype=torch.float32)),
                per_feature=dict(r["per_feature"], alignment_score=scores.tolist(), fired=fired))


def test_claim_bimodality_not_from_dead_features_alone():
    records = [_dead_at_init(r) for r in grid()]
    rows = [r for r in claims_table(records) if r["claim"] == "a"]
    assert all(r["values"]["mean"] > 5 / 9 for r in rows)  # bimodal over every feature ...
    assert all(r["values"]["alive_mean"] <= 5 / 9 for r in rows)  # ... but not over those that fired
    assert {r["arch"]: r["verdict"] for r in rows} == {"relu": "not supported", "topk": "not supported"}
    assert all("without the features that never fired" in r["measured"] for r in rows)
    # bimodal among fired features as well: still supported, and the fired-only value is shown
    rows = [r for r in claims_table(grid()) if r["claim"] == "a"]
    assert {r["verdict"] for r in rows} == {"supported"} and all("fired" in r["measured"] for r in rows)
    # records without per-feature data: the verdict rests on the recorded coefficient alone
    bare = [dict(_dead_at_init(r), per_feature=None) for r in grid()]
    assert _verdicts(bare, "a") == {"relu": "supported", "topk": "supported"}


def test_claim_ce_at_matched_l0():
    # default grid: aligned CE is 0.01 below the standard curve at the same L0 -> not supported
    assert _verdicts(grid(), "c") == {"relu": "not supported", "topk": "not supported"}
    better = [make_record(a, al, v, s, ce=0.95 if al else 0.9) for a in ("relu", "topk")
              for al in (None, "project") for v in SPARSITY[a][1] for s in (0, 1)]
    assert _verdicts(better, "c") == {"relu": "supported", "topk": "supported"}
    # ReLU with one standard sparsity: cannot interpolate
    one = [r for r in better if not (r["arch"] == "relu" and r["alignment"] is None and
                                     r["sparsity"]["value"] == 0.08)]
    rows = [r for r in claims_table(one) if r["claim"] == "c" and r["arch"] == "relu"]
    assert rows[0]["verdict"] == "insufficient data" and "not enough points" in rows[0]["measured"]
    # aligned L0 outside the standard range: no extrapolation
    far = [dict(r, metrics=dict(r["metrics"], l0=500.0)) if r["alignment"] else r for r in better]
    rows = [r for r in claims_table(far) if r["claim"] == "c" and r["arch"] == "relu"]
    assert rows[0]["verdict"] == "insufficient data" and "outside" in rows[0]["measured"]
    # interpolation: standard line (L0 16 -> 0.90, L0 34 -> 0.96); aligned at L0 25 with CE 0.92 is lower
    # than the interpolated 0.93 by more than the seed spread
    recs = [make_record("relu", None, 0.08, s, l0=16.0, ce=0.90) for s in (0, 1)]
    recs += [make_record("relu", None, 0.02, s, l0=34.0, ce=0.96) for s in (0, 1)]
    recs += [make_record("relu", "project", 0.04, s, l0=25.0, ce=0.92 + 0.001 * s) for s in (0, 1)]
    row = [r for r in claims_table(recs) if r["claim"] == "c"][0]
    assert row["verdict"] == "not supported"
    assert row["values"]["points"][0]["standard"] == pytest.approx(0.90 + 0.06 * (25.15 - 16.15) / 18)


def test_claim_e_and_formatting():
    recs = grid(archs=("topk", "panneal"))
    rows = claims_table(recs)
    e = {r["arch"]: r["verdict"] for r in rows if r["claim"] == "e"}
    assert e == {"topk": "not supported", "panneal": "not supported"}  # (c) fails in the default grid
    assert all(r["verdict"] in ("supported", "not supported", "insufficient data") for r in rows)
    md = format_claims(rows)
    assert md.splitlines()[0] == "| claim | setting | measured | verdict |" and "± " in md
    with pytest.raises(ValueError):
        format_claims(rows, "html")


def test_table_cli_groups_seeds(store, tmp_path, capsys):
    from figures.tables import results_table

    records = load_records(store)
    text = results_table(records, fmt="markdown")
    n_groups = len({r["group"] for r in records})
    assert len(text.splitlines()) == 2 + n_groups
    one = next(r for r in records if r["stability"])
    line = next(ln for ln in text.splitlines() if f"| {one['dict_size']} |" in ln)
    assert line.count("|") == 15
    with pytest.raises(ValueError, match="no records of experiment 'nope'"):
        results_table(records, experiment="nope")
    with pytest.raises(ValueError, match="fmt must be"):
        results_table(records, fmt="html")
    assert main(["table", "--results", str(store), "--format", "text"]) == 0
    out = capsys.readouterr().out.splitlines()
    # what the records were trained on comes first, with the smoke warning for smoke records (these are)
    assert out[0] == "scale smoke: these dictionaries test the pipeline, not the paper"
    assert out[1].startswith(f"records: {len(records)} · scale smoke") and "1M training tokens" in out[1]
    assert out[3].startswith("experiment\tSAE")
    # token counts in short form: a smoke run's 24,576 tokens read 24.6k, not 0.024576M
    short = results_table([dict(r, train_tokens=24_576) for r in records], fmt="text").splitlines()[1]
    assert "\t24.6k\t" in short and "0.024576M" not in short
    assert main(["table", "--results", str(tmp_path / "nowhere")]) == 2


def test_saebench_table_means_each_group_over_its_seeds_and_counts_missing_values(store, capsys):
    from figures.tables import saebench_table

    records = [r for r in load_records(store) if r["arch"] == "topk" and r["sparsity"]["value"] == 8]
    assert len({r["group"] for r in records}) == 2 and len(records) >= 4
    with pytest.raises(ValueError, match="no record .* has SAEBench results"):
        saebench_table(store)
    for i, r in enumerate(records):
        d = store / "saebench" / r["id"]
        d.mkdir(parents=True)
        m = {"autointerp": {"autointerp_score": 0.5 + 0.1 * (r["alignment"] is not None) + 0.01 * r["seed"]}}
        if r["seed"] != 0:  # seed 0 has no SCR: its cell counts the seeds that do
            m["scr_metrics"] = {"scr_metric_threshold_20": 0.2}
        (d / "x.json").write_text(json.dumps({"record_id": r["id"], "eval_result_metrics": m}))
    text = saebench_table(store)
    lines = text.splitlines()
    assert len(lines) == 2 + 2 and lines[0].endswith("| autointerp | autointerp if 'none' |") and "SCR@20" in lines[0]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        row = dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
        grp = [r for r in records if f"TopK {'standard' if r['alignment'] is None else r['alignment']}" == row["SAE"]]
        ai = [0.5 + 0.1 * (r["alignment"] is not None) + 0.01 * r["seed"] for r in grp]
        assert row["seeds"] == str(len(grp)) and row["autointerp"].startswith(f"{np.mean(ai):.3f} ± {np.std(ai):.3f}")
        assert row["SCR@20"] == f"0.200 (n={len(grp) - 1})" and row["core FVE"] == row["autointerp if 'none'"] == "n/a"
    assert main(["table", "--saebench", "--results", str(store)]) == 0
    assert capsys.readouterr().out.strip().endswith(text)


def test_autointerp_chance_levels_are_the_scores_of_answering_none_and_of_guessing(tmp_path):
    from figures import load_saebench
    from figures.saebench_results import autointerp_chance_levels

    cfg = {"n_top_ex_for_scoring": 2, "n_random_ex_for_scoring": 10, "n_iw_sampled_ex_for_scoring": 2}  # n = 14
    res = {"eval_type_id": "autointerp", "record_id": "r1", "eval_config": cfg,
           "eval_result_metrics": {"autointerp": {"autointerp_score": 0.6}},
           "eval_result_unstructured": {  # scores as SAEBench computes them: examples whose activity was called right
               "7": {"predictions": [1, 5, 99], "correct seqs": [1, 2, 3, 4], "score": 10 / 14},  # 99: never shown
               "9": {"predictions": [], "correct seqs": [1, 2, 3], "score": 11 / 14}}}
    c = autointerp_chance_levels(res)
    assert c["n_latents"] == 2
    assert c["all_inactive"] == pytest.approx((10 / 14 + 11 / 14) / 2)  # answer "none": 10/14 and 11/14 right
    assert c["random_guess"] == pytest.approx((1 - (2 * 10 + 4 * 12) / 196 + 11 / 14) / 2)  # name 2 (0) at random
    assert autointerp_chance_levels({**res, "eval_result_unstructured": {}}) is None
    bad = [({"eval_config": {**cfg, "n_random_ex_for_scoring": 0}}, "stored score"),  # wrong n: scores disagree
           ({"eval_config": {**cfg, "n_top_ex_for_scoring": float("inf")}}, "non-negative integers"),
           ({"eval_config": {**cfg, "n_top_ex_for_scoring": True}}, "non-negative integers"),
           ({"eval_config": {}}, "non-negative integers")]
    for latent in ({"predictions": 5, "correct seqs": [1]}, {"predictions": [], "correct seqs": ["1", "2"]},
                   {"predictions": [], "correct seqs": [1, 1]}, {"predictions": [], "correct seqs": [15]}, [1],
                   {"predictions": [], "correct seqs": [1], "score": "high"},
                   {"predictions": [], "correct seqs": [1], "score": [1]}):
        bad.append(({"eval_result_unstructured": {**res["eval_result_unstructured"], "3": latent}}, "latent 3"))
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            autointerp_chance_levels({**res, **change})
    sb = tmp_path / "saebench"
    sb.mkdir()
    (sb / "a.json").write_text(json.dumps(res))
    (sb / "b.json").write_text(json.dumps({**res, "record_id": "r2", "eval_config": {}}))  # no chance levels
    (sb / "c.json").write_text(json.dumps({**res, "record_id": "r3", "eval_result_metrics": {
        "autointerp": {"autointerp_score": 42.0}}}))  # not a fraction: left out
    (sb / "d.json").write_text("{not json")
    (sb / "run_1.json").write_text(json.dumps({"command": "x", "evals": ["core"], "results": []}))  # our summary
    with pytest.warns(UserWarning) as caught:
        values, n_files = load_saebench(tmp_path)
    text = str(caught[0].message)
    assert "3 SAEBench file(s) or value(s)" in text and "b.json: no chance levels" in text
    assert "c.json: autointerp = 42.0 left out" in text and "d.json: unreadable" in text and "run_1" not in text
    assert n_files == 5 and values["r1"] == {"autointerp": 0.6, "autointerp_all_inactive": c["all_inactive"],
                                             "autointerp_random_guess": c["random_guess"]}
    assert values["r2"] == {"autointerp": 0.6} and "autointerp" not in values.get("r3", {})
    (sb / "stale").mkdir()
    (sb / "stale" / "a.json").write_text(json.dumps(res))  # a second autointerp result for r1
    with pytest.raises(ValueError, match="two SAEBench files give autointerp for record r1"):
        load_saebench(tmp_path)


def test_saebench_results_may_be_gzipped(tmp_path):
    import gzip

    from figures import load_saebench

    d = tmp_path / "saebench" / "r1"
    d.mkdir(parents=True)
    res = {"record_id": "r1", "eval_result_metrics": {"scr_metrics": {"scr_metric_threshold_20": 0.25}}}
    (d / "scr.json.gz").write_bytes(gzip.compress(json.dumps(res).encode()))
    (d / "broken.json.gz").write_bytes(b"not gzip")  # counted, ignored
    z = bytearray(gzip.compress(json.dumps(res).encode() * 50))
    z[30:40] = b"\xff" * 10  # a gzip header with a corrupt deflate stream: zlib.error, not OSError
    (d / "corrupt.json.gz").write_bytes(bytes(z))
    values, n_files = load_saebench(tmp_path)
    assert values == {"r1": {"scr": 0.25}} and n_files == 3


def _fig10_labels(records):
    drawn = FIGURES["fig10"].draw(records, None)
    try:
        return {a.get_label() for ax in drawn.fig.axes for a in ax.patches}
    finally:
        import matplotlib.pyplot as plt
        plt.close(drawn.fig)


def test_fig10_marks_features_that_never_fired():
    """Fig. 10 draws, beside each standard histogram, where its never-fired features lie (at their initial score),
    so that a second mode made of dead features is visible as such; none when every feature fired."""
    assert "standard, never fired" in _fig10_labels([_dead_at_init(r) for r in grid()])
    assert not any("never fired" in lbl for lbl in _fig10_labels(grid()))


def _standard_per_feature(records, **changes):
    """``records`` with each standard record's ``per_feature`` changed (a value, or a function of the old one)."""
    out = []
    for r in records:
        if r["alignment"] is None:
            pf = dict(r["per_feature"])
            for k, v in changes.items():
                pf[k] = v(pf[k]) if callable(v) else v
            r = dict(r, per_feature=pf)
        out.append(r)
    return out


@pytest.mark.parametrize("alive", [0, 1, 3])
def test_claim_bimodality_is_not_supported_by_records_whose_features_almost_all_never_fired(alive):
    """Records that say which features fired, where fewer than 4 did: the coefficient over every feature (bimodal
    here) is made by features that never fired, so it cannot support claim (a) (it was "supported", from those
    scores alone)."""
    records = _standard_per_feature([_dead_at_init(r) for r in grid()],
                                    fired=lambda f: [False] * (len(f) - alive) + [True] * alive)
    rows = [r for r in claims_table(records) if r["claim"] == "a"]
    assert {r["verdict"] for r in rows} == {"insufficient data"}
    assert all("fewer than 4 features fired" in r["measured"] for r in rows)


@pytest.mark.parametrize("per_feature", [[0.1, 0.2], "scores", 3])
def test_claims_and_fig10_read_records_whose_per_feature_is_not_a_dict(per_feature):
    records = [dict(r, per_feature=per_feature) if r["alignment"] is None else r
               for r in (_dead_at_init(r) for r in grid())]
    assert _verdicts(records, "a") == {"relu": "supported", "topk": "supported"}  # the coefficient alone
    assert not any("never fired" in lbl for lbl in _fig10_labels(records))


def test_fired_flags_that_are_not_booleans_or_numbers_are_not_read():
    """``fired`` as 0/1 or counts is read as booleans; strings ("false" is truthy) or NaN make the array unusable,
    as if the record had no per-feature data (they were read as fired)."""
    dead = [_dead_at_init(r) for r in grid()]
    for fired in (lambda f: [int(x) for x in f], lambda f: [7 * int(x) for x in f]):
        assert _verdicts(_standard_per_feature(dead, fired=fired), "a") == {"relu": "not supported",
                                                                          "topk": "not supported"}
    for fired in (lambda f: ["true" if x else "false" for x in f], lambda f: [1.0 if x else float("nan") for x in f]):
        records = _standard_per_feature(dead, fired=fired)
        assert _verdicts(records, "a") == {"relu": "supported", "topk": "supported"}
        assert not any("fired" in r["measured"] for r in claims_table(records) if r["claim"] == "a")
        assert not any("never fired" in lbl for lbl in _fig10_labels(records))


def test_a_figure_without_its_architectures_names_them_and_the_flag_that_trains_them(tmp_path):
    """After ``reproduce main --archs relu`` Figs. 3 and 5 (TopK/BatchTopK) are skipped: the reason says which
    architectures the store's 'main' records have and which ``--archs`` adds the missing ones (it said to run
    ``reproduce main``, which had been run)."""
    for name in ("fig3", "fig5"):
        res = FIGURES[name].fn(grid(archs=("relu",)), tmp_path, None)
        assert not res.written
        assert "has ReLU only" in res.missing and "main --archs topk,batchtopk" in res.missing, res.missing
    res = FIGURES["fig2"].fn(grid(archs=("topk",)), tmp_path, None)
    assert "has TopK only" in res.missing and "main --archs relu,panneal" in res.missing, res.missing
    assert "--archs" not in FIGURES["fig3"].fn([], tmp_path, None).missing  # no 'main' records at all


def _autointerp_store(tmp_path):
    """A store like results/reproduce_small's SAEBench part: TopK standard/aligned at two dict_sizes, three seeds,
    autointerp scores about 0.65 under a judge-answering-'none' floor of 10/14 (the bars nearly fill the panel)."""
    d = tmp_path / "store"
    cfg = {"n_top_ex_for_scoring": 2, "n_random_ex_for_scoring": 10, "n_iw_sampled_ex_for_scoring": 2}
    latent = {"predictions": [], "correct seqs": [1, 2, 3, 4], "score": 10 / 14}  # answering 'none': 10/14
    recs = [make_record("topk", al, 32, s, experiment=exp, dict_size=size)
            for exp, size in (("main", 4096), ("sizes", 16384)) for al in (None, "project") for s in range(3)]
    for i, r in enumerate(recs):
        write_record(d, r)
        sb = d / "saebench" / r["id"]
        sb.mkdir(parents=True)
        (sb / "autointerp.json").write_text(json.dumps({
            "eval_type_id": "autointerp", "record_id": r["id"], "eval_config": cfg,
            "eval_result_metrics": {"autointerp": {"autointerp_score": 0.63 + 0.005 * i}},
            "eval_result_unstructured": {"0": latent}}))
    return d


def _covered_boxes(fig) -> list:
    """Display boxes of what a legend must not cover: bars, lines (error-bar caps, floor lines, line segments) and
    points of every panel, and the texts (title, caption, panel titles, axis and tick labels)."""
    from matplotlib.transforms import Bbox

    boxes = [t.get_window_extent() for t in fig.texts]
    for ax in fig.axes:
        boxes += [a.get_window_extent() for a in [*ax.patches, *ax.lines, ax.title, ax.xaxis.label, ax.yaxis.label,
                                                  *ax.get_xticklabels(), *ax.get_yticklabels()] if a.get_visible()]
        for c in ax.collections:
            if hasattr(c, "get_segments"):  # error bars, floor lines: each segment in data coordinates
                boxes += [Bbox(ax.transData.transform(seg[[0, -1]])) for seg in c.get_segments()]
            else:  # scatter: its points
                boxes += [Bbox([xy, xy]) for xy in c.get_offset_transform().transform(c.get_offsets())]
    return boxes


def test_fig12_legends_cover_no_bar_point_line_or_text(tmp_path):
    """Fig. 12's legends, laid out as saved (title and caption included), overlap none of the bars, error bars,
    points, floor lines or texts (the left legend covered the TopK-4096 bars of results/reproduce_small)."""
    from figures.paper import STYLE_RC, _annotate

    d = _autointerp_store(tmp_path)
    with matplotlib.rc_context(STYLE_RC):
        drawn = FIGURES["fig12"].draw(load_records(d), d)
        _annotate(drawn, "fig12", FIGURES["fig12"].title)
        drawn.fig.draw_without_rendering()
    legends = list(drawn.fig.legends) + [ax.get_legend() for ax in drawn.fig.axes if ax.get_legend()]
    assert legends and len(drawn.fig.axes[0].patches) == 4  # two dict_sizes x standard/aligned
    covered = _covered_boxes(drawn.fig)
    for leg in legends:
        box = leg.get_window_extent()
        assert not [b for b in covered if box.overlaps(b)], box


def test_redrawing_the_same_records_writes_the_same_pdf_bytes(store, tmp_path):
    """A committed figure must not change when its records did not: no creation date in the PDF."""
    import time

    records = load_records(store)
    a = FIGURES["fig2"].fn(records, tmp_path / "a")
    time.sleep(1.1)  # a PDF creation date has a resolution of one second
    b = FIGURES["fig2"].fn(records, tmp_path / "b")
    assert a.paths and (tmp_path / "a" / "fig2.pdf").read_bytes() == (tmp_path / "b" / "fig2.pdf").read_bytes()


def test_claims_count_a_dictionary_recorded_under_two_experiments_once():
    """`reproduce sizes --also ablations` records one trained dictionary as both `sizes` and `ablations`: the
    claims table must not count it twice (the paper's experiment is kept), and its header says so."""
    sizes = [make_record("relu", al, 0.04, s, experiment="sizes", paths={"dictionary": f"d/run/trainer_{s}{al}"})
             for al in (None, "project") for s in (0, 1)]
    ablations = [dict(r, experiment="ablations", id=r["id"].replace("sizes", "ablations")) for r in sizes]
    other = make_record("relu", None, 0.04, 0, experiment="ablations", paths={"dictionary": "d/other/trainer_0"})
    rows = claims_table(ablations + sizes + [other])
    assert {r["experiment"] for r in rows if r["claim"] == "d"} == {"sizes", "ablations"}
    ablation_rows = [r for r in rows if r["experiment"] == "ablations" and r["claim"] == "a"]
    assert ablation_rows and "1/1 records" in ablation_rows[0]["measured"]  # only the record that is no copy
    assert "2/2 records" in [r for r in rows if r["experiment"] == "sizes" and r["claim"] == "a"][0]["measured"]
    header = claims_header(ablations + sizes + [other])
    assert header[-1].startswith("records: 9 (4 of them the same dictionaries as others")
    # records of different sparsities or steps of one folder are different measurements
    two_steps = [dict(sizes[0], steps=10), dict(sizes[0], steps=20)]
    assert claims_header(two_steps)[-1].startswith("records: 2 · ")


def _fig10_axis_and_note(records):
    drawn = FIGURES["fig10"].draw(records, None)
    try:
        return drawn.fig.axes[0].get_xlim(), drawn.note
    finally:
        import matplotlib.pyplot as plt
        plt.close(drawn.fig)


def test_fig10_draws_scores_beyond_the_stored_histogram_range():
    """Standard p-anneal's scores reach 2.7 on Gemma-3 (43% above 1.525): Fig. 10 histograms the per-feature scores
    over a range that holds them all (it drew the stored histograms, which stop at 1.525, and hid them)."""
    records = _standard_per_feature(grid(), alignment_score=lambda a: [2.6 if i % 2 else x for i, x in enumerate(a)])
    (lo, hi), note = _fig10_axis_and_note(records)
    assert hi >= 2.6 and lo <= -0.5 and "every score lies in [-0.525, 2.625]" in note
    # without per-feature scores the stored histograms are drawn, and what lies beyond them is counted
    stored = [dict(r, per_feature=None,
                   alignment_scores=dict(r["alignment_scores"], overflow=F // 2) if r["alignment"] is None
                   else r["alignment_scores"]) for r in records]
    (lo, hi), note = _fig10_axis_and_note(stored)
    assert hi == pytest.approx(1.525) and "not drawn: " in note and "standard 50.0%" in note


def test_fig10_uses_the_stored_histograms_when_a_record_has_no_per_feature_score():
    """A record whose per-feature list is empty (its stored histogram holds 205 scores) was drawn as an empty
    histogram, with no word in the caption, once another record had per-feature scores."""
    import numpy as np
    from figures.paper import _fig10_edges
    edges = list(np.linspace(-0.525, 1.525, 42))
    with_scores = {"alignment_scores": {"hist_edges": edges, "hist_counts": [1] * 41, "n": 41},
                   "per_feature": {"alignment_score": [0.1, 2.0]}}
    empty = {"alignment_scores": {"hist_edges": edges, "hist_counts": [5] * 41, "n": 205},
             "per_feature": {"alignment_score": []}}
    assert _fig10_edges([with_scores, empty]) is None
    assert _fig10_edges([with_scores]) is not None
