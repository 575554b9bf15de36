"""Datasets for the SAEBench evals: SAEBench's hub names online, local substitutes offline.

Local substitutes are named ``dla-local/...``. Inside :meth:`LocalData.patch` SAEBench (and SAELens, which core
uses) resolve these names to JSON-lines files this module writes into a work folder; hub names pass through
untouched. The mapping (``DIR`` is ``--data-dir``, laid out like ``../shared/data``; each folder's README gives
source and license):

==========================================  =================================================  =====================
local name                                  source (``DIR/...``)                               label -> classes
==========================================  =================================================  =====================
``dla-local/text`` (core, autointerp)       the bundled corpus (held-out split) or             --
                                            ``--text-source`` (any ``iter_texts`` source)
``dla-local/bias_in_bios_class_set1``       ``bias_in_bios_sample/bios.jsonl.gz``              profession: accountant,
                                                                                               nurse, surgeon,
                                                                                               physician
``dla-local/amazon_reviews_multidomain``    ``amazon_reviews_multidomain/reviews.jsonl.gz``    category: books, dvd,
                                                                                               electronics, kitchen
``dla-local/amazon_reviews_multidomain``    same, 1- and 5-star reviews only                   rating: 1.0, 5.0
``_sentiment``
``dla-local/ag_news``                       ``ag_news/train_subset.jsonl.gz``,                 label: 0..3
                                            ``ag_news/test.jsonl.gz``
``dla-local/language_id``                   ``language_id_sentences/sentences.jsonl.gz``       label: en fr de es nl
``dla-local/code_language``                 ``code_language/{train,test}.jsonl.gz``            label: C Python HTML
                                                                                               Java PHP
==========================================  =================================================  =====================

Files without their own test split are split by text: a row is a test row iff ``crc32(text) % 4 == 0``.
For sparse probing and TPP each class gets ``train_set_size // 2`` train and ``test_set_size // 2`` test texts
(class-balanced sampling with the eval's seed; SAEBench's own bias-in-bios loader also balances gender, ours does
not). SCR uses SAEBench's own code on ``dla-local/bias_in_bios_class_set1`` (profession x gender; pairs
(accountant, nurse), (surgeon, nurse)) and ``dla-local/amazon_reviews_multidomain`` (category x rating 1/5; pairs
(books, kitchen), (dvd, electronics)).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import random
import zlib
from pathlib import Path

from . import import_saebench

PREFIX = "dla-local/"
TEXT = PREFIX + "text"
#: SAEBench's hub datasets per eval
HUB_DATASETS = {
    "core": "Skylion007/openwebtext",
    "autointerp": "monology/pile-uncopyrighted",
    "sparse_probing": ["LabHC/bias_in_bios_class_set1", "LabHC/bias_in_bios_class_set2",
                       "LabHC/bias_in_bios_class_set3", "canrager/amazon_reviews_mcauley_1and5",
                       "canrager/amazon_reviews_mcauley_1and5_sentiment", "codeparrot/github-code",
                       "fancyzhx/ag_news", "Helsinki-NLP/europarl"],
    "scr": ["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5"],
    "tpp": ["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5"],
}
GENDER = {"male": 0, "female": 1}
PROFESSIONS = {"accountant": 0, "nurse": 13, "physician": 19, "surgeon": 25}  # SAEBench's profession ids
CATEGORIES = {"books": 0, "dvd": 1, "electronics": 2, "kitchen": 3}


def _spec(folder, files, label, classes, text="text", test_files=None, filt=None, to_key=str):
    return {"folder": folder, "files": files, "test_files": test_files, "label": label, "classes": classes,
            "text": text, "filter": filt, "to_key": to_key}


#: labelled local datasets: name -> where the rows are and which label/classes are used
LABELLED = {
    PREFIX + "bias_in_bios_class_set1": _spec("bias_in_bios_sample", ["bios.jsonl.gz"], "profession",
                                              [str(PROFESSIONS[p]) for p in PROFESSIONS],
                                              to_key=lambda v: str(PROFESSIONS.get(v, v))),
    PREFIX + "amazon_reviews_multidomain": _spec("amazon_reviews_multidomain", ["reviews.jsonl.gz"], "category",
                                                 [str(CATEGORIES[c]) for c in CATEGORIES],
                                                 to_key=lambda v: str(CATEGORIES.get(v, v))),
    PREFIX + "amazon_reviews_multidomain_sentiment": _spec(
        "amazon_reviews_multidomain", ["reviews.jsonl.gz"], "rating", ["1.0", "5.0"],
        filt=lambda r: r.get("rating") in (1.0, 5.0), to_key=lambda v: str(float(v))),
    PREFIX + "ag_news": _spec("ag_news", ["train_subset.jsonl.gz"], "label", ["0", "1", "2", "3"],
                              test_files=["test.jsonl.gz"]),
    PREFIX + "language_id": _spec("language_id_sentences", ["sentences.jsonl.gz"], "label",
                                  ["en", "fr", "de", "es", "nl"]),
    PREFIX + "code_language": _spec("code_language", ["train.jsonl.gz"], "label", ["C", "Python", "HTML", "Java", "PHP"],
                                    test_files=["test.jsonl.gz"]),
}
#: SCR/TPP tables: local name -> (two-column source, SAEBench metadata, column2 values, SCR column1 pairs)
SCR_SETS = {
    PREFIX + "bias_in_bios_class_set1": dict(
        base=PREFIX + "bias_in_bios", spec=LABELLED[PREFIX + "bias_in_bios_class_set1"],
        columns=("hard_text", "profession", "gender"), col2_src="gender",
        meta={"text_column_name": "hard_text", "column1_name": "profession", "column2_name": "gender",
              "column2_autointerp_name": "gender", "column1_mapping": PROFESSIONS, "column2_mapping": GENDER},
        col2_vals=("male", "female"), pairs=[("accountant", "nurse"), ("surgeon", "nurse")]),
    PREFIX + "amazon_reviews_multidomain": dict(
        base=PREFIX + "amazon_reviews_multidomain", spec=LABELLED[PREFIX + "amazon_reviews_multidomain"],
        columns=("text", "category", "rating"), col2_src="rating",
        meta={"text_column_name": "text", "column1_name": "category", "column2_name": "rating",
              "column2_autointerp_name": "Amazon Review Sentiment", "column1_mapping": CATEGORIES,
              "column2_mapping": {1.0: 1.0, 5.0: 5.0}},
        col2_vals=(1.0, 5.0), pairs=[("books", "kitchen"), ("dvd", "electronics")]),
}
#: the local datasets used per eval when none are named
LOCAL_DEFAULTS = {
    "sparse_probing": [PREFIX + "bias_in_bios_class_set1", PREFIX + "amazon_reviews_multidomain",
                       PREFIX + "amazon_reviews_multidomain_sentiment", PREFIX + "code_language",
                       PREFIX + "ag_news", PREFIX + "language_id"],
    "scr": list(SCR_SETS), "tpp": list(SCR_SETS),
}
#: small samples shipped with the repository (for tests and smoke runs), laid out like ../shared/data
SAMPLE_DATA_DIR = Path(__file__).resolve().parent / "sample_data"


def is_test_row(text: str) -> bool:
    """Held-out rule for files without a test split: ``crc32(text) % 4 == 0`` (about 25% of rows)."""
    return zlib.crc32(text.encode("utf-8")) % 4 == 0


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"local dataset file {path} does not exist (check --data-dir; expected the layout "
                                f"of ../shared/data, see benchmarks/saebench/data.py)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class LocalData:
    """Local substitutes for SAEBench's datasets.

    Args:
        data_dir: folder laid out like ``../shared/data`` (default: the small samples shipped in
            ``benchmarks/saebench/sample_data``).
        work_dir: folder where the JSON-lines files SAEBench reads are written.
        text_source: source of general text for core/autointerp (``None``: the bundled corpus's held-out
            split; else anything :func:`dictionary_learning_aligned.data.iter_texts` reads).
        text_chars: how many characters of general text to write (at most).
    """

    def __init__(self, data_dir=None, work_dir=None, text_source=None, text_chars: int = 2_000_000):
        self.data_dir = Path(data_dir) if data_dir is not None else SAMPLE_DATA_DIR
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"--data-dir {self.data_dir} is not a folder")
        if work_dir is None:
            raise ValueError("LocalData needs a work_dir")
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.text_source = text_source
        self.text_chars = int(text_chars)
        self._folders: dict[str, Path] = {}
        self.used: dict[str, dict] = {}

    # ------------------------------------------------------------------ files
    def _rows(self, name: str) -> tuple[list[dict], list[dict], list[str]]:
        spec = LABELLED[name]
        folder = self.data_dir / spec["folder"]
        files = [folder / f for f in spec["files"]]
        rows = [r for f in files for r in _read_jsonl(f)]
        if spec["filter"]:
            rows = [r for r in rows if spec["filter"](r)]
        if spec["test_files"]:
            tfiles = [folder / f for f in spec["test_files"]]
            test = [r for f in tfiles for r in _read_jsonl(f)]
            if spec["filter"]:
                test = [r for r in test if spec["filter"](r)]
            train = rows
            files += tfiles
        else:
            train = [r for r in rows if not is_test_row(r[spec["text"]])]
            test = [r for r in rows if is_test_row(r[spec["text"]])]
        return train, test, [str(f) for f in files]

    def text_folder(self) -> Path:
        """Write (once) ``work_dir/text/train.jsonl`` with ``{"text": ...}`` rows of general text."""
        if TEXT in self._folders:
            return self._folders[TEXT]
        from dictionary_learning_aligned.data import iter_texts

        out = self.work_dir / "text"
        out.mkdir(exist_ok=True)
        n = chars = 0
        split = "test" if self.text_source is None else None
        with open(out / "train.jsonl", "w", encoding="utf-8") as f:
            for t in iter_texts(self.text_source, split=split, min_chars=101):
                f.write(json.dumps({"text": t}) + "\n")
                n += 1
                chars += len(t)
                if chars >= self.text_chars:
                    break
        src = "bundled corpus dictionary_learning_aligned/corpus (held-out split 'test')" \
            if self.text_source is None else str(self.text_source)
        self.used[TEXT] = {"source": src, "documents": n, "characters": chars}
        self._folders[TEXT] = out
        return out

    def scr_folder(self, base: str) -> Path:
        """Write (once) the two-column table SAEBench's SCR code reads for ``base`` (train/test JSON lines)."""
        if base in self._folders:
            return self._folders[base]
        key = next(k for k, v in SCR_SETS.items() if v["base"] == base)
        s = SCR_SETS[key]
        spec = s["spec"]
        train, test, files = self._rows(key)
        tcol, c1, c2 = s["columns"]
        c1map, c2map = s["meta"]["column1_mapping"], s["meta"]["column2_mapping"]
        out = self.work_dir / base.removeprefix(PREFIX)
        out.mkdir(exist_ok=True)
        for split, rows in (("train", train), ("test", test)):
            with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for r in rows:
                    a, b = r[spec["label"]], r[s["col2_src"]]
                    if a in c1map and b in c2map:
                        f.write(json.dumps({tcol: r[spec["text"]], c1: c1map[a], c2: c2map[b]}) + "\n")
        self.used[base] = {"files": files, "columns": {"text": tcol, "column1": c1, "column2": c2},
                           "column1_classes": sorted(c1map), "column2_values": sorted(c2map, key=str),
                           "split": "crc32(text) % 4 == 0 -> test"}
        self._folders[base] = out
        return out

    def labelled(self, name: str, train_set_size: int, test_set_size: int, seed: int):
        """``({class: [train texts]}, {class: [test texts]})`` for sparse probing / TPP, class-balanced.

        Raises:
            KeyError: unknown local name. ValueError: a class has fewer rows than requested (names the class,
            the counts and the files).
        """
        if name not in LABELLED:
            raise KeyError(f"unknown local dataset {name!r}; known: {sorted(LABELLED)}")
        spec = LABELLED[name]
        train, test, files = self._rows(name)
        out = []
        for rows, n, split in ((train, train_set_size // 2, "train"), (test, test_set_size // 2, "test")):
            by = {}
            for r in rows:
                by.setdefault(spec["to_key"](r[spec["label"]]), []).append(r[spec["text"]])
            d = {}
            for c in spec["classes"]:
                have = by.get(c, [])
                if len(have) < n:
                    raise ValueError(f"local dataset {name}: class {c!r} has {len(have)} {split} rows, {n} needed "
                                     f"({split}_set_size {2 * n} // 2); files {files}. Lower the set sizes or use "
                                     f"a bigger --data-dir")
                d[c] = random.Random(seed).sample(have, n)
            out.append(d)
        self.used[name] = {"files": files, "label": spec["label"], "classes": spec["classes"],
                           "train_per_class": train_set_size // 2, "test_per_class": test_set_size // 2,
                           "split": "file split" if spec["test_files"] else "crc32(text) % 4 == 0 -> test"}
        return out[0], out[1]

    # ------------------------------------------------------------------ patching SAEBench
    def _resolve(self, name: str) -> dict:
        if name == TEXT:
            return {"train": str(self.text_folder() / "train.jsonl")}
        bases = {v["base"]: k for k, v in SCR_SETS.items()}
        if name in bases:
            folder = self.scr_folder(name)
            return {"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")}
        raise ValueError(f"unknown local dataset {name!r}: SAEBench asked to load it as a table; local tables: "
                         f"{[TEXT, *bases]}")

    @contextlib.contextmanager
    def patch(self):
        """Within the block SAEBench/SAELens resolve ``dla-local/...`` names to the local files; everything is
        restored on exit."""
        import_saebench()
        import datasets
        import sae_bench.evals.scr_and_tpp.dataset_creation as dc
        import sae_bench.evals.scr_and_tpp.main as scr_main
        import sae_bench.sae_bench_utils.dataset_info as info
        import sae_bench.sae_bench_utils.dataset_utils as du
        import sae_lens.training.activations_store as store

        real_load = datasets.load_dataset

        def load_dataset(path, *args, **kwargs):
            if isinstance(path, str) and path.startswith(PREFIX):
                kwargs.pop("trust_remote_code", None)
                return real_load("json", data_files=self._resolve(path), split=kwargs.get("split"),
                                 streaming=kwargs.get("streaming", False))
            return real_load(path, *args, **kwargs)

        real_multi = du.get_multi_label_train_test_data

        def get_multi_label_train_test_data(dataset_name, train_set_size, test_set_size, random_seed):
            if dataset_name.startswith(PREFIX):
                return self.labelled(dataset_name, train_set_size, test_set_size, random_seed)
            return real_multi(dataset_name, train_set_size, test_set_size, random_seed)

        saved = [(m, "load_dataset", m.load_dataset) for m in (du, dc, store)]
        saved.append((du, "get_multi_label_train_test_data", real_multi))
        added = []
        for name, s in SCR_SETS.items():
            for table, key, val in ((info.dataset_metadata, s["base"], s["meta"]),
                                    (info.chosen_classes_per_dataset, name, s["spec"]["classes"]),
                                    (scr_main.COLUMN2_VALS_LOOKUP, name, s["col2_vals"])):
                if key not in table:
                    table[key] = val
                    added.append((table, key))
        for name, spec in LABELLED.items():
            if name not in info.chosen_classes_per_dataset:
                info.chosen_classes_per_dataset[name] = spec["classes"]
                added.append((info.chosen_classes_per_dataset, name))
        try:
            for m in (du, dc, store):
                m.load_dataset = load_dataset
            du.get_multi_label_train_test_data = get_multi_label_train_test_data
            yield self
        finally:
            for m, attr, v in saved:
                setattr(m, attr, v)
            for table, key in added:
                table.pop(key, None)


def scr_pairs(names) -> dict:
    """SCR ``column1_vals_lookup`` for local dataset ``names`` (hub names are left to SAEBench's defaults)."""
    return {n: list(SCR_SETS[n]["pairs"]) for n in names if n in SCR_SETS}


def present_locally(name: str, data_dir=None) -> bool:
    """Whether the files of the local dataset ``name`` exist under ``data_dir`` (default: the shipped samples)."""
    spec = LABELLED.get(name) or SCR_SETS[name]["spec"]
    folder = Path(data_dir) if data_dir is not None else SAMPLE_DATA_DIR
    return all((folder / spec["folder"] / f).is_file() for f in spec["files"] + (spec["test_files"] or []))


def check_names(eval_name: str, names: list[str]) -> None:
    """Validate dataset names for an eval.

    Raises:
        ValueError: a ``dla-local/`` name that does not exist for this eval.
    """
    allowed = set(SCR_SETS) if eval_name in ("scr", "tpp") else set(LABELLED)
    bad = [n for n in names if n.startswith(PREFIX) and n not in allowed]
    if bad:
        raise ValueError(f"{eval_name}: unknown local datasets {bad}; available: {sorted(allowed)}")


__all__ = ["LocalData", "HUB_DATASETS", "LOCAL_DEFAULTS", "LABELLED", "SCR_SETS", "TEXT", "PREFIX", "present_locally",
           "SAMPLE_DATA_DIR", "scr_pairs", "check_names", "is_test_row"]
