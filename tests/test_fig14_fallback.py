"""Fig. 14 (weight tying vs aligned training) takes its standard and aligned settings from experiment ``main`` when
``tying`` has none of them, at the same training budget only: a store that trained only ``tying``'s tied
dictionaries still gets the whole figure; a store with all of ``tying`` draws ``tying``'s records alone."""

from collections import Counter

import pytest

from figures import FIGURES
from figures.paper import Missing, _annotate
from figures.training_budget import same_budget

from .test_figures import grid, make_record
from .test_figures_budget import FAITHFUL, OLD

TIED = dict(archs=("relu", "topk"), alignments=("tied",), experiment="tying")


def _draw(records):
    """(the annotated Drawn of Fig. 14, its caption on one line, per panel the legend labels of the lines drawn)."""
    d = FIGURES["fig14"].draw(records, None)
    _annotate(d, "fig14", FIGURES["fig14"].title)
    labels = [tuple(ax.get_legend_handles_labels()[1]) for ax in d.fig.axes]
    return d, " ".join(d.fig.get_supxlabel().split()), labels


def _settings(records) -> Counter:
    return Counter((r["experiment"], r["arch"], r["alignment"]) for r in records)


def test_tied_only_tying_takes_standard_and_aligned_from_main():
    main = grid(archs=("relu", "topk", "batchtopk"), **FAITHFUL)  # batchtopk is not a tying architecture
    d, caption, labels = _draw(grid(**TIED, **FAITHFUL) + main)
    assert len(labels) == 4  # ReLU and TopK, CE loss recovered and alive fraction
    for panel in labels:
        assert panel == ("standard", "aligned", "tied (W_enc = W_dec^T)"), labels
    # 2 sparsities x 2 seeds per setting
    assert _settings(d.records) == {("tying", "relu", "tied"): 4, ("tying", "topk", "tied"): 4,
                                    ("main", "relu", None): 4, ("main", "relu", "project"): 4,
                                    ("main", "topk", None): 4, ("main", "topk", "project"): 4}
    assert "standard and aligned from 'main' (same training config; 'tying' has none of them); tied from " \
           "'tying'" in caption, caption
    assert "mixed budgets" not in caption and "steps 48,829" in caption


def test_full_tying_uses_its_own_records_only():
    """No doubled points: ``tying``'s standard and aligned settings are never topped up with ``main``'s, even at
    the same budget."""
    tying = grid(alignments=(None, "project", "tied"), experiment="tying", **FAITHFUL)
    d, caption, labels = _draw(tying + grid(**FAITHFUL))
    assert all(r["experiment"] == "tying" for r in d.records) and len(d.records) == len(tying) == 24
    assert "'main'" not in caption, caption
    assert all(len(panel) == 3 for panel in labels), labels


def test_fallback_is_per_setting():
    """``tying`` lacking only ReLU's standard records: those come from ``main``, every other setting from
    ``tying`` (TopK's standard is not doubled)."""
    tying = [r for r in grid(alignments=(None, "project", "tied"), experiment="tying", **FAITHFUL)
             if (r["arch"], r["alignment"]) != ("relu", None)]
    d, caption, labels = _draw(tying + grid(**FAITHFUL))
    counts = _settings(d.records)
    assert counts[("main", "relu", None)] == 4 and counts[("main", "topk", None)] == 0
    assert sum(counts.values()) == 24 and counts[("tying", "topk", None)] == 4
    assert "standard (ReLU) from 'main'" in caption, caption
    assert all(len(panel) == 3 for panel in labels), labels


def test_main_of_another_budget_is_left_out_and_said():
    """``main``'s records of 2,442 steps do not stand in for ``tying``'s of 48,829: only the tied lines are drawn
    and the caption says why the others are missing."""
    d, caption, labels = _draw(grid(**TIED, **FAITHFUL) + grid(**OLD))
    assert {r["experiment"] for r in d.records} == {"tying"}
    assert all(panel == ("tied (W_enc = W_dec^T)",) for panel in labels), labels
    assert "mixed budgets" not in caption
    assert ("standard and aligned left out: 'tying' has none and 'main''s are of another training budget (steps "
            "2,442, recipe unrecorded, 20M training tokens; 'tying''s: steps 48,829, recipe saebench, 100M training "
            "tokens)") in caption, caption


def test_same_budget_compares_what_both_records_state():
    faithful = make_record("relu", None, 0.02, 0, **FAITHFUL)
    assert same_budget(faithful, make_record("relu", "tied", 0.02, 0, **dict(FAITHFUL, steps=48_828)))  # 1 in 50k
    assert not same_budget(faithful, make_record("relu", "tied", 0.02, 0, **OLD))
    assert not same_budget(faithful, make_record("relu", "tied", 0.02, 0, **dict(FAITHFUL, recipe="scaled")))
    no_recipe = {k: v for k, v in FAITHFUL.items() if k != "recipe"}
    assert same_budget(faithful, make_record("relu", "tied", 0.02, 0, **no_recipe))  # recipe unrecorded: not compared


def test_main_of_another_corpus_or_layer_is_not_taken_and_said():
    """``main``'s records read other activations (another ``--corpus`` or layer, same model and budget): their CE
    loss recovered and alive fractions were measured on other text, so they do not stand in for ``tying``'s; the
    caption says that neither experiment has standard and aligned records for the figure's setting."""
    for other in (dict(corpus="other.txt"), dict(layer=6)):
        main = [dict(r, **other) for r in grid(**FAITHFUL)]
        d, caption, labels = _draw(grid(**TIED, **dict(FAITHFUL, corpus="mine.txt")) + main)
        assert {r["experiment"] for r in d.records} == {"tying"}, other
        assert all(panel == ("tied (W_enc = W_dec^T)",) for panel in labels), labels
        assert ("no standard and aligned: neither 'tying' nor 'main' has records of them with model "
                "smollm2-135m-instruct, dict_size 64 (and the same layer and corpus)") in caption, caption


def test_no_main_of_the_model_or_dict_size_is_said_in_the_caption():
    """``tying``'s tied records of another model (or dict_size) than ``main``'s: the figure draws the tied lines
    alone, and the caption says why standard and aligned are missing instead of saying nothing."""
    main = grid(**FAITHFUL)
    for tied in ([dict(r, model="gemma-3-270m") for r in grid(**TIED, **FAITHFUL)],
                 grid(**TIED, **dict(FAITHFUL, dict_size=128))):
        d, caption, labels = _draw(tied + main)
        assert {r["experiment"] for r in d.records} == {"tying"}
        want = "model gemma-3-270m, dict_size 64" if tied[0]["model"] != main[0]["model"] else \
            "model smollm2-135m-instruct, dict_size 128"
        assert f"no standard and aligned: neither 'tying' nor 'main' has records of them with {want}" in caption, \
            caption
    _, caption, _ = _draw(grid(**TIED, **FAITHFUL) + grid(alignments=(None,), **FAITHFUL))
    assert "standard from 'main'" in caption and "no aligned: neither" in caption, caption


def test_main_without_steps_of_other_training_tokens_is_another_budget():
    """Records that state no steps (neither their own nor the trainer config's) are still compared on their
    training tokens: 20M tokens of ``main`` do not stand in for ``tying``'s 100M."""
    no_steps = {k: v for k, v in OLD.items() if k != "trainer"}
    d, caption, _ = _draw(grid(**TIED, **FAITHFUL) + grid(**no_steps))
    assert {r["experiment"] for r in d.records} == {"tying"}
    assert "standard and aligned left out" in caption and "20M training tokens" in caption, caption
    faithful = make_record("relu", None, 0.02, 0, **FAITHFUL)
    assert not same_budget(faithful, make_record("relu", "tied", 0.02, 0, **no_steps))
    assert same_budget(faithful, make_record("relu", "tied", 0.02, 0, scale="small", train_tokens=100_000_000))


def test_tied_records_only_at_another_dict_size_skip_the_figure():
    """``tying``'s standard and aligned records at one dict_size and its tied ones at another (a store that mixes
    scales): the figure draws the first setting, which has no tied line, so it is skipped with a message naming
    both settings instead of drawing 'weight tying vs aligned training' without the tied SAEs."""
    tying = grid(alignments=(None, "project"), experiment="tying", **FAITHFUL)
    tied = grid(**TIED, **dict(FAITHFUL, dict_size=128))
    with pytest.raises(Missing, match=r"no records with alignment 'tied' of experiment 'tying' with model "
                                      r"smollm2-135m-instruct, dict_size 64, .* \(its tied records: model "
                                      r"smollm2-135m-instruct, dict_size 128\)"):
        FIGURES["fig14"].draw(tying + tied + grid(**FAITHFUL), None)
