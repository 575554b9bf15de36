"""What the demo tells a newcomer about the model: ``demo --help`` names both offline aliases and the install step of
the opt-in one, and the loading line names the offline model's file format and the dtype actually asked for."""

import pytest

from dictionary_learning_aligned import __main__ as dla_main
from dictionary_learning_aligned import demo
from dictionary_learning_aligned.demo import DemoConfig
from dictionary_learning_aligned.models import OFFLINE_NAMES


def test_demo_help_names_every_offline_model_and_the_gemma_install(capsys):
    with pytest.raises(SystemExit) as e:
        dla_main.main(["demo", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    start = text.index("--model str language model")  # the option's help, not the usage line
    model_help = text[start:text.index("--layer [int]", start)]
    for name in OFFLINE_NAMES:
        assert name in model_help, (name, model_help)
    assert "install.sh --gemma" in model_help


@pytest.mark.parametrize("model, dtype, expected", [
    ("smollm2-135m-instruct", "float32", "(4-bit Q4_1 GGUF, de-quantised to float32)"),
    ("SmolLM2-135M-Instruct", "bfloat16", "(4-bit Q4_1 GGUF, de-quantised to bfloat16)"),
    ("gemma-3-270m", "float32", "(Q4_K_M GGUF, de-quantised to float32)"),
    ("Gemma-3-270M", "float16", "(Q4_K_M GGUF, de-quantised to float16)"),
])
def test_loading_line_names_the_offline_format_and_the_dtype_asked_for(model, dtype, expected):
    line = demo._loading_line(DemoConfig(model=model, model_dtype=dtype, device="cpu"))
    assert line == f"[1/3] loading {model} on cpu {expected}"


def test_loading_line_of_another_model_names_no_format():
    assert demo._loading_line(DemoConfig(model="EleutherAI/pythia-70m", device="cpu")) == \
        "[1/3] loading EleutherAI/pythia-70m on cpu"


def test_every_offline_model_has_a_format_defined_once_beside_the_names():
    from dictionary_learning_aligned import models

    assert set(models.GGUF_FORMATS) == set(OFFLINE_NAMES)
    assert "GGUF_FORMATS" not in vars(demo) or demo.GGUF_FORMATS is models.GGUF_FORMATS  # imported, not a copy


def _option_help(command: str, option: str, next_option: str, capsys) -> str:
    """The help text of ``option`` in ``command --help``, whitespace-normalized (words split at a hyphen joined)."""
    import re

    with pytest.raises(SystemExit) as e:
        dla_main.main([command, "--help"])
    assert e.value.code == 0
    text = re.sub(r"(\w-)\s+", r"\1", " ".join(capsys.readouterr().out.split()))
    start = text.index(option + " ", text.index("options:"))  # the option's help, not the usage line
    return text[start:text.index(next_option, start)]


def test_train_help_names_the_offline_models_with_the_text_of_demo(capsys):
    train_help = _option_help("train", "--model [str]", "--layer [int]", capsys)
    demo_help = _option_help("demo", "--model str", "--layer [int]", capsys)
    for name in OFFLINE_NAMES:
        assert name in train_help, (name, train_help)
    assert "install.sh --gemma" in train_help and "building a missing cache" in train_help
    from dictionary_learning_aligned.models import MODEL_NAME_HELP

    assert MODEL_NAME_HELP in train_help and MODEL_NAME_HELP in demo_help  # one text, not a copy
