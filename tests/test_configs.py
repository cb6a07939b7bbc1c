"""The config files (configs/*.py) and their argument (bert_jax/config_args.py): every name loads, with and without
`tiny`, and validates; `tiny` changes only sizes (the keys listed here) and makes them small; a bad argument is one
error naming it and what is accepted; `configs/pretrain.py:builtin,tiny` runs through the command line in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, load_config

from bert_jax import config_args, finetune, pretrain

NAMES = {  # every name each config file takes (the first element of its argument)
    "configs/pretrain.py": ("builtin", "tiny", "mini", "small", "medium", "base", "large"),
    "configs/glue.py": ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"),
    "configs/squad.py": ("v1.1", "v2.0"),
    "configs/ner.py": ("conll2003",),
    "configs/swag.py": ("swag",),
    "configs/classify.py": ("classification", "regression"),
}
DEFAULTS = {"configs/pretrain.py": "builtin", "configs/glue.py": "sst2", "configs/squad.py": "v1.1",
            "configs/ner.py": "conll2003", "configs/swag.py": "swag", "configs/classify.py": "classification"}

# The keys `tiny` may change: sizes only (lengths, counts, steps), never the task, data source, optimizer or dtype.
FINETUNING_SIZES = {"data.max_seq_length", "data.max_train_examples", "data.max_eval_examples", "train.batch_size",
                    "train.eval_batch_size", "train.num_steps", "train.eval_every", "train.log_every"}
SQUAD_SIZES = {"data.doc_stride", "data.max_query_length"}
PRETRAINING_SIZES = {"model.size", "model.max_position_embeddings", "data.dupe_factor", "data.builtin_max_documents",
                     "data.builtin_vocab_size", "optimizer.warmup_steps", "train.num_steps", "train.log_every",
                     "train.eval_every", "train.eval_batches", "train.checkpoint_every", "train.keep_every"}
PHASE_SIZES = {"seq_length", "batch_size", "max_predictions"}

SPECS = [f"{path}:{name}{modifier}" for path, names in NAMES.items() for name in names for modifier in ("", ",tiny")]


def flat(config) -> dict:
    """{dotted key: value} of a ConfigDict, phases left whole."""
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict) and key != "phases":
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(json.loads(config.to_json()), "")
    return out


def validated(spec, tmp_path):
    """The config of `spec` with what its command line must add (a model, data), through validate_config."""
    config = load_config(spec)
    if spec.startswith("configs/pretrain.py"):
        if config.data.source == "files":
            config.data.input_files, config.data.vocab_file = str(tmp_path / "corpus.txt"), str(tmp_path / "vocab.txt")
        return pretrain.validate_config(config)
    config.init_checkpoint = str(tmp_path)
    if not config.data.source:
        config.data.source = str(tmp_path)
    return finetune.validate_config(config)


@pytest.mark.parametrize("spec", SPECS)
def test_every_name_loads_with_and_without_tiny_and_validates(spec, tmp_path):
    config = validated(spec, tmp_path)
    path, _, arg = spec.partition(":")
    name = arg.split(",")[0]
    if path == "configs/pretrain.py":
        assert config.model.size == ("tiny" if name in ("builtin", "tiny") or arg.endswith(",tiny") else name)
        assert config.data.source == ("builtin" if name == "builtin" else "files")
    elif path == "configs/classify.py":
        assert (config.task.name, config.task.kind) == ("classify", name)
    else:
        assert config.task.name == {"configs/squad.py": f"squad_{name}"}.get(path, name)


@pytest.mark.parametrize("path", sorted(NAMES))
def test_no_argument_and_tiny_alone_mean_the_default_name(path):
    default = load_config(f"{path}:{DEFAULTS[path]}")
    assert flat(load_config(path)) == flat(default)
    if path != "configs/pretrain.py":  # there `tiny` alone is the model size's name (test below)
        assert flat(load_config(f"{path}:tiny")) == flat(load_config(f"{path}:{DEFAULTS[path]},tiny"))


def test_pretrain_tiny_alone_is_the_tiny_model_recipe_and_the_shrunk_runs_say_builtin_or_a_size():
    recipe = load_config("configs/pretrain.py:tiny")
    assert recipe.model.size == "tiny" and recipe.train.num_steps == 1_000_000
    assert flat(load_config("configs/pretrain.py:base,tiny")) == flat(load_config("configs/pretrain.py:large,tiny"))


@pytest.mark.parametrize("spec", [spec for spec in SPECS if not spec.endswith(",tiny")])
def test_tiny_changes_only_sizes_and_makes_them_small(spec):
    full, tiny = load_config(spec), load_config(spec + ",tiny")
    full_keys, tiny_keys = flat(full), flat(tiny)
    assert set(full_keys) == set(tiny_keys)
    changed = {key for key in full_keys if full_keys[key] != tiny_keys[key]}
    if spec.startswith("configs/pretrain.py"):
        allowed = PRETRAINING_SIZES | {"phases"}
        assert len(tiny.phases) == len(full.phases)
        for full_phase, tiny_phase in zip(full.phases, tiny.phases):
            assert {k for k in full_phase if full_phase[k] != tiny_phase[k]} <= PHASE_SIZES
            assert tiny_phase["seq_length"] <= 64 and tiny_phase["batch_size"] <= 8
        assert tiny.model.size == "tiny" and tiny.train.num_steps <= 20
        assert 0 < tiny.train.eval_every <= tiny.train.num_steps and tiny.train.checkpoint_every <= tiny.train.num_steps
    else:
        allowed = FINETUNING_SIZES | (SQUAD_SIZES if spec.startswith("configs/squad.py") else set())
        assert tiny.data.max_seq_length <= 64 and tiny.train.batch_size <= 8 and tiny.train.num_steps <= 20
        assert 0 < tiny.data.max_train_examples <= 32 and 0 < tiny.data.max_eval_examples <= 32
        assert 0 < tiny.train.eval_every <= tiny.train.num_steps
    assert changed <= allowed, f"{spec},tiny changes more than sizes: {sorted(changed - allowed)}"
    assert changed, f"{spec},tiny changes nothing"


@pytest.mark.parametrize("spec,element,why", [
    ("configs/glue.py:sst2,huge", "huge", "neither a name nor a modifier"),
    ("configs/glue.py:sst2,tiny,tiny", "tiny", "a repeated modifier"),
    ("configs/squad.py:v3", "v3", "neither a name nor a modifier"),
    ("configs/pretrain.py:base,large", "large", "one name, in the first place"),
    ("configs/swag.py:swag,", "", "an empty element"),
])
def test_a_bad_argument_is_an_error_naming_it_and_what_is_accepted(spec, element, why):
    path, _, arg = spec.partition(":")
    with pytest.raises(Exception) as error:
        load_config(spec)
    message = str(error.value)
    assert f"{path}: unknown argument {arg!r} ({element!r}: {why}); use NAME[,MODIFIER...] with NAME one of " in message
    assert f"{NAMES[path]} (default {DEFAULTS[path]!r}) and MODIFIER one of ('tiny',)" in message


def test_the_parser_by_itself():
    assert config_args.parse(None, "c.py", ("a", "b"), default="a") == config_args.ConfigArg("a", frozenset())
    assert config_args.parse("", "c.py", ("a", "b"), default="a") == config_args.ConfigArg("a", frozenset())
    assert config_args.parse("b, tiny", "c.py", ("a", "b"), default="a") == config_args.ConfigArg("b",
                                                                                                  frozenset({"tiny"}))
    assert config_args.parse("tiny", "c.py", ("a", "b"), default="a").tiny
    assert not config_args.parse("tiny", "c.py", ("tiny",), default="a").tiny  # a name first
    with pytest.raises(ValueError, match=r"^c\.py: unknown argument 'c'"):
        config_args.parse("c", "c.py", ("a", "b"), default="a")


def test_override_sets_existing_keys_only():
    config = load_config("configs/swag.py")
    config_args.override(config, {"train.num_steps": 3, "data.max_seq_length": 32})
    assert (config.train.num_steps, config.data.max_seq_length) == (3, 32)
    with pytest.raises(KeyError, match="'train.num_step' does not exist"):
        config_args.override(config, {"train.num_step": 3})


def test_the_shrunk_builtin_run_through_the_command_line(tmp_path):
    """`python -m bert_jax pretrain --config configs/pretrain.py:builtin,tiny`, nothing overridden: the built-in
    corpus cut to 20 documents, its vocabulary trained, 20 steps evaluated and checkpointed at 10 and 20, the model
    exported and the fill-mask examples printed."""
    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-m", "bert_jax", "pretrain", "--config=configs/pretrain.py:builtin,tiny",
                          f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"pretrain: done at step 20; workdir {workdir}" in run.stdout
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 21))
    assert [r["step"] for r in records if "eval_loss" in r] == [10, 20]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
    assert (workdir / "model" / "bert_jax.json").exists()
    assert "fill-mask with the model in" in run.stdout and "Return a new [MASK] of the list." in run.stdout
