"""Honest scale labels (issue 16, items 5 and 6): every figure and the claims table state the scale, model, recipe,
steps, batch size, unique tokens and epochs of the records they draw; smoke records get no verdicts; two claims
tables side by side; Fig. 12's right panel has its legend; Fig. 14's alive-fraction axis does not magnify 0.1%."""

import json

import pytest

from dictionary_learning_aligned.records import write_record
from figures import FIGURES, claims_table, load_records
from figures.__main__ import main
from figures.paper import Missing, _annotate

from .test_figures import SPARSITY, grid, make_record

# the faithful recipe of issue 16: batch 2048, 100M tokens over 20M unique ones, 48,829 steps
FAITHFUL = dict(scale="small", recipe="saebench", steps=48_829, batch_size=2048, train_tokens=100_001_792,
                unique_tokens=20_000_000, epochs=5)
# a record written before recipe/steps/batch_size existed: 2,442 steps in the trainer config, 20M tokens
OLD = dict(scale="small", trainer={"steps": 2442}, train_tokens=20_000_000, unique_tokens=20_000_000, epochs=1)


def _write(d, records):
    for r in records:
        write_record(d, r)
    return d


def _captions(records, name, results=None):
    """(suptitle, caption) of figure ``name`` drawn from ``records`` as the saved figure is annotated."""
    d = FIGURES[name].draw(records, results)
    _annotate(d, name, FIGURES[name].title)
    return " ".join(d.fig.get_suptitle().split()), " ".join(d.fig.get_supxlabel().split()), d


def _claims_cli(capsys, *argv) -> str:
    assert main(["claims", *map(str, argv)]) == 0
    return capsys.readouterr().out


def test_record_budget_reads_new_fields_and_derives_old_ones():
    from figures.training_budget import record_budget

    new = record_budget(make_record("relu", None, 0.02, 0, **FAITHFUL))
    assert (new["recipe"], new["steps"], new["batch_size"], new["derived"]) == ("saebench", 48_829, 2048, [])
    old = record_budget(make_record("relu", None, 0.02, 0, **OLD))
    # 20M / 2,442 = 8,190.0: the last batch was cut short; the power of two within 0.5% is the batch size
    assert (old["recipe"], old["steps"], old["batch_size"]) == ("unrecorded", 2442, 8192)
    assert old["derived"] == ["steps", "batch_size"] and (old["unique_tokens"], old["epochs"]) == (20_000_000, 1)
    odd = record_budget(make_record("relu", None, 0.02, 0, trainer={"steps": 3}, train_tokens=3000))
    assert odd["batch_size"] == 1000  # not near a power of two: the plain quotient
    none = record_budget(make_record("relu", None, 0.02, 0))  # trainer {} : nothing to derive from
    assert none["steps"] is None and none["batch_size"] is None and none["recipe"] == "unrecorded"


def test_budget_line_names_everything_and_ranges_when_mixed():
    from figures.training_budget import budget_line

    line = budget_line([make_record("relu", None, 0.02, 0, **FAITHFUL)])
    for part in ("scale small", "model smollm2-135m-instruct", "recipe saebench", "steps 48,829", "batch 2,048",
                 "100M training tokens (20M unique, 5 epochs)"):
        assert part in line, (part, line)
    assert not line.startswith("mixed") and "derived" not in line
    old = budget_line([make_record("relu", None, 0.02, 0, **OLD)])
    assert "recipe unrecorded" in old and "batch 8,192 (derived from tokens/steps)" in old and "(20M unique, 1 epoch)" in old
    mixed = budget_line([make_record("relu", None, 0.02, 0, **OLD), make_record("relu", None, 0.08, 0, **FAITHFUL)])
    assert mixed.startswith("mixed budgets: ")
    assert "steps 2,442-48,829" in mixed and "batch 2,048-8,192" in mixed and "recipe saebench, unrecorded" in mixed
    assert "epochs 1-5" not in mixed and "1-5 epochs" in mixed
    assert "model" not in budget_line([make_record("relu", None, 0.02, 0, **FAITHFUL)], model=False)
    assert budget_line([]) == ""


def test_every_figure_states_the_budget_of_its_records(tmp_path):
    recs = grid(archs=("relu", "topk"), **FAITHFUL)
    recs += grid(archs=("relu", "topk"), alignments=(None, "project", "tied"), seeds=(0,), experiment="tying",
                 **FAITHFUL)
    recs += [make_record("topk", al, 8, 0, experiment="long", **dict(FAITHFUL, steps=97_658, train_tokens=200_003_584,
                                                                     epochs=10)) for al in (None, "project")]
    d = _write(tmp_path / "store", recs)
    sb = d / "saebench"
    sb.mkdir()
    for i, r in enumerate(recs[:8]):
        (sb / f"{i}.json").write_text(json.dumps({"record_id": r["id"], "eval_result_metrics": {
            "scr_metrics": {"scr_metric_threshold_20": 0.1}, "autointerp": {"autointerp_score": 0.7}}}))
    records, drawn = load_records(d), 0
    for name in FIGURES:
        try:
            title, caption, fig = _captions(records, name, d)
        except Missing:
            continue
        drawn += 1
        if not fig.records:  # fig1: a schematic, no records
            continue
        assert "smollm2-135m-instruct" in title, name
        for part in ("scale small", "recipe saebench", "batch 2,048", "20M unique"):
            assert part in caption, (name, part, caption)
        if name in ("fig19", "fig20"):  # the long run (97,658 steps) next to the main runs: a mixed budget
            assert "mixed budgets: " in caption and "steps 48,829-97,658" in caption and "5-10 epochs" in caption
        else:
            assert "steps 48,829" in caption and "(20M unique, 5 epochs)" in caption, (name, caption)
    assert drawn >= 15


def test_claims_caption_states_the_budget(tmp_path, capsys):
    text = _claims_cli(capsys, "--results", _write(tmp_path / "faithful", grid(**FAITHFUL)))
    first = text.splitlines()[0]
    assert first.startswith("records: 16 · scale small · model smollm2-135m-instruct · recipe saebench")
    assert "steps 48,829 · batch 2,048 · 100M training tokens (20M unique, 5 epochs)" in first
    assert "**supported**" in text and "not the paper" not in text
    mixed = _claims_cli(capsys, "--results", _write(tmp_path / "mixed", grid(**FAITHFUL) + grid(experiment="sizes", **OLD)))
    assert "mixed budgets: " in mixed.splitlines()[0] and "steps 2,442-48,829" in mixed.splitlines()[0]
    # rows of different budgets each name their steps
    assert "| main · ReLU · d=64 · 48,829 steps |" in mixed and "| sizes · ReLU · d=64 · 2,442 steps |" in mixed


def test_smoke_claims_say_so_first_and_give_no_bold_verdicts(tmp_path, capsys):
    d = _write(tmp_path / "smoke", grid())  # make_record's default scale is smoke
    for fmt in ("markdown", "text"):
        out = _claims_cli(capsys, "--results", d, "--format", fmt)
        first = out.splitlines()[0]
        assert first.startswith("scale smoke: ") and "test the pipeline, not the paper" in first
        assert "**" not in out and "[supported]" not in out and "| supported |" not in out
        assert "smoke: no verdict (reads supported)" in out
        assert "smoke rows without verdicts" in out.splitlines()[-1]
    rows = claims_table(grid())
    assert all(r["smoke"] for r in rows) and {r["verdict"] for r in rows} <= {"supported", "not supported"}
    # one smoke experiment among small ones
    part = _claims_cli(capsys, "--results", _write(tmp_path / "part", grid() + grid(experiment="sizes", **OLD)))
    assert part.splitlines()[0].startswith("scale smoke: ") and "(16 of 32 records are smoke)" in part.splitlines()[0]
    assert "| sizes · ReLU · d=64 · 2,442 steps | " in part and "**" in part  # the small rows keep their bold verdicts
    assert all("**" not in ln for ln in part.splitlines() if "| main ·" in ln)


def test_key_numbers_of_each_claim():
    from figures.compare import key_numbers

    rows = {(r["claim"], r["arch"]): r for r in claims_table(grid(**FAITHFUL))}
    assert key_numbers(rows["a", "relu"]).startswith("BC ") and "/4 > 5/9" in key_numbers(rows["a", "relu"])
    assert key_numbers(rows["b", "relu"]) == "aligned dead ≤ 0.0% (standard ≤ 20.0%)"
    assert key_numbers(rows["c", "topk"]).startswith("Δ CE -0.010") and "lower at" in key_numbers(rows["c", "topk"])
    assert key_numbers(rows["d", "topk"]) == "MCS 0.350 vs 0.300, higher at 2/2"
    assert key_numbers(rows["e", "topk"]) == "b yes, c no, d yes"
    assert key_numbers(dict(rows["d", "topk"], values={})) == "—"
    # (c) without a comparison says why: the standard curve's points, or aligned L0 outside its range
    one = [r for r in grid(archs=("relu",), **FAITHFUL) if r["sparsity"]["value"] == 0.02]
    assert key_numbers(next(r for r in claims_table(one) if r["claim"] == "c")) == (
        "one standard sparsity; equal L0 needs a standard curve (2+ sparsities)")
    far = [dict(r, metrics=dict(r["metrics"], l0=500.0)) if r["alignment"] else r
           for r in grid(archs=("relu",), **FAITHFUL)]
    row = next(r for r in claims_table(far) if r["claim"] == "c")
    assert row["verdict"] == "insufficient data"
    assert key_numbers(row) == "aligned L0 outside the standard range [16.1, 34.1], not extrapolated"


def test_two_claims_tables_side_by_side(tmp_path, capsys):
    from figures.compare import compare_claims

    short = _write(tmp_path / "short_2442", grid(**OLD))
    # the faithful store: the aligned MCS falls below standard, and a setting the short store lacks
    faithful = [make_record(a, al, v, s, mcs=0.2 if al else 0.3, **FAITHFUL) for a in ("relu", "topk")
                for al in (None, "project") for v in SPARSITY[a][1] for s in (0, 1)]
    faithful += grid(archs=("batchtopk",), **FAITHFUL)
    long_ = _write(tmp_path / "faithful", faithful)
    assert main(["claims", "--results", str(short), "--compare", str(long_)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("short_2442: 16 records · scale small") and "steps 2,442 ·" in lines[0]
    assert lines[1].startswith("faithful: 24 records · scale small") and "recipe saebench" in lines[1]
    d_relu = next(ln for ln in lines if ln.startswith("| (d) | main · ReLU"))
    assert d_relu == ("| (d) | main · ReLU · d=64 | **supported** | [2,442 steps] MCS 0.350 vs 0.300, higher at 2/2 | "
                      "**not supported** | [48,829 steps] MCS 0.200 vs 0.300, higher at 0/2 |")
    bt = next(ln for ln in lines if ln.startswith("| (a) | main · BatchTopK"))
    assert "| — | not in this store |" in bt
    assert lines[-1] == ("verdict changed in 2 of 9 settings present in both stores; 0 only in short_2442, "
                         "5 only in faithful")
    text = compare_claims(load_records(short), load_records(long_), ("2,442 steps", "faithful"), fmt="text")
    assert "(d) main · ReLU · d=64: 2,442 steps [supported] [2,442 steps] MCS" in text and "**" not in text
    with pytest.raises(ValueError, match="unknown format"):
        compare_claims([], [], fmt="html")
    assert main(["claims", "--results", str(short), "--compare", str(tmp_path / "nowhere")]) == 2
    smoke = _write(tmp_path / "smoke", grid())
    assert main(["claims", "--results", str(smoke), "--compare", str(long_)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("scale smoke: ")
    assert all("**" not in ln.split(" | ")[2] for ln in out.splitlines() if ln.startswith("| ("))


def _autointerp_store(tmp_path):
    recs = grid(archs=("topk",), **FAITHFUL)
    d = _write(tmp_path / "store", recs)
    sb = d / "saebench"
    sb.mkdir()
    for i, r in enumerate(recs):
        (sb / f"{i}.json").write_text(json.dumps({"record_id": r["id"], "eval_result_metrics": {
            "autointerp": {"autointerp_score": 0.6 + 0.01 * i}}}))
    return d


def test_fig12_right_panel_has_its_legend(tmp_path):
    """One legend, right of the right panel, names the modes of both panels (each entry a bar and a marker); the
    bar panel has none (it covered bars there: test_figures.test_fig12_legends_cover_no_bar_point_line_or_text)."""
    d = _autointerp_store(tmp_path)
    _, _, drawn = _captions(load_records(d), "fig12", d)
    left, right = drawn.fig.axes[:2]
    assert left.get_legend() is None and right.get_legend() is not None
    labels = [t.get_text() for t in right.get_legend().get_texts()]
    assert "standard" in labels and "aligned" in labels, labels


def test_fig14_alive_axis_does_not_magnify_a_tenth_of_a_percent(tmp_path):
    recs = grid(archs=("relu", "topk"), alignments=(None, "project", "tied"), seeds=(0,), experiment="tying",
                alive=1.0, **FAITHFUL)
    recs = [dict(r, metrics=dict(r["metrics"], frac_alive=0.999)) if r["alignment"] == "tied" else r for r in recs]
    _, caption, drawn = _captions(recs, "fig14")
    alive_axes = [ax for ax in drawn.fig.axes if ax.get_ylabel() == "alive fraction"]
    assert len(alive_axes) == 2
    for ax in alive_axes:
        lo, hi = ax.get_ylim()
        assert hi - lo >= 0.05 and lo >= -0.01 and hi <= 1.01, (lo, hi)
    assert "fraction axes span at least 5%" in caption


def test_fraction_axis_stays_at_zero_when_an_error_bar_dips_below_it():
    """Dead fractions near 0 whose std error bar reaches 0.0002 below 0 (the faithful store's Fig. 5 and budget
    figure): the axis starts at 0 less its 2% margin, as before; it is not recentred on the data down to -0.02
    (only values beyond the margin, from a foreign record, unpin it from [0, 1])."""
    from matplotlib.figure import Figure

    from figures.paper import _fraction_axis

    ax = Figure().subplots()
    ax.errorbar([0, 1], [0.0003, 0.003], yerr=[0.0005, 0.0005])
    _fraction_axis(ax)
    assert ax.get_ylim() == pytest.approx((-0.001, 0.051)), ax.get_ylim()


def test_claims_on_a_store_without_records_is_an_error(tmp_path, capsys):
    from figures.__main__ import main

    (tmp_path / "empty" / "records").mkdir(parents=True)
    assert main(["claims", "--results", str(tmp_path / "empty")]) == 2
    assert "holds no records" in capsys.readouterr().err


def test_budgets_a_step_apart_are_one_budget_not_mixed():
    """The faithful store holds records of 48,829 and 48,828 steps (the ninth session's full-batch change dropped an
    epoch-end batch of 64 rows): one budget, shown as a range but not called mixed; 2,442 next to 48,829 is mixed."""
    from figures.training_budget import budget_line

    one_less = dict(FAITHFUL, steps=48_828, train_tokens=FAITHFUL["train_tokens"] - 2048)
    line = budget_line([make_record("relu", None, 0.02, 0, **FAITHFUL), make_record("relu", None, 0.08, 0, **one_less)])
    assert not line.startswith("mixed"), line
    assert "steps 48,828-48,829" in line, line
    mixed = budget_line([make_record("relu", None, 0.02, 0, **FAITHFUL),
                         make_record("relu", None, 0.08, 0, **dict(FAITHFUL, steps=48_000))])
    assert mixed.startswith("mixed budgets: "), mixed


def test_compared_store_with_only_tied_records_of_a_setting_says_so(tmp_path):
    """A faithful store whose `tying` holds only the tied dictionaries (standard and aligned are `main`'s) reads
    "only tied records here" in the side-by-side table, not "not in this store"."""
    from figures.compare import compare_claims

    short = grid(archs=("relu",), experiment="tying", **OLD)
    faithful = grid(archs=("relu",), **FAITHFUL) + grid(archs=("relu",), alignments=("tied",), experiment="tying",
                                                        **FAITHFUL)
    text = compare_claims(faithful, short, ("faithful", "short"))
    row = next(ln for ln in text.splitlines() if ln.startswith("| (b) | tying · ReLU"))
    assert row.startswith("| (b) | tying · ReLU · d=64 | — | only tied records here, no standard/project pair | ")
    # a setting with no records at all still reads "not in this store"
    assert "| — | not in this store |" in compare_claims(grid(archs=("relu",), **FAITHFUL), short, ("a", "b"))
