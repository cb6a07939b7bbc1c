"""The argument of a config file (`--config configs/glue.py:sst2,tiny`): what `get_config(arg)` reads.

The argument is comma-separated (big_vision style). Its first element names the run when it is one of the
config's names (a GLUE task, a SQuAD version, a model size, ...); every other element is a modifier:

    tiny    the same run shrunk until a test finishes it in seconds on CPU: a small model (pretraining), few
            examples, short sequences, small batches, a few steps, evaluation and checkpoints every few steps.
            Only sizes change (the keys a config's `tiny` sets, e.g. `FINETUNING_TINY` below); the task, the
            data source, the optimizer and the rest stay as in the full run, so a test exercises the real config.

`configs/glue.py:tiny` is SST-2 shrunk (the first element is no task name, so it is a modifier); in
configs/pretrain.py, whose names are model sizes, `:tiny` is the tiny model's recipe and `:builtin,tiny` or
`:base,tiny` the shrunk runs.
"""

from __future__ import annotations

import dataclasses

MODIFIERS = ("tiny",)

# What `tiny` sets in every fine-tuning config (configs/{glue,squad,ner,swag,classify}.py): 32 training and 32
# evaluation examples of at most 64 tokens, batches of 8, 8 steps with an evaluation (and checkpoint) every 4.
FINETUNING_TINY = {
    "data.max_seq_length": 64,
    "data.max_train_examples": 32,
    "data.max_eval_examples": 32,
    "train.batch_size": 8,
    "train.eval_batch_size": 16,
    "train.num_steps": 8,
    "train.eval_every": 4,
    "train.log_every": 2,
}


@dataclasses.dataclass(frozen=True)
class ConfigArg:
    name: str  # one of the config's names (its default when the argument names none)
    modifiers: frozenset  # a subset of MODIFIERS

    @property
    def tiny(self) -> bool:
        return "tiny" in self.modifiers


def parse(arg: str | None, config_file: str, names: tuple, default: str) -> ConfigArg:
    """Splits `arg` ('sst2,tiny', 'tiny', '' or None) into the run's name and its modifiers.

    An element that is neither a name (first place only) nor a modifier, a repeated modifier or an empty element
    is a ValueError that names the config file, the argument and what it accepts.
    """
    elements = [] if arg is None or arg == "" else [element.strip() for element in arg.split(",")]
    name = default
    if elements and elements[0] in names:
        name, elements = elements[0], elements[1:]
    seen = set()
    for element in elements:
        if element not in MODIFIERS or element in seen:
            why = "a repeated modifier" if element in seen else (
                "an empty element" if not element else
                "one name, in the first place" if element in names else "neither a name nor a modifier")
            raise ValueError(f"{config_file}: unknown argument {arg!r} ({element!r}: {why}); use "
                             f"NAME[,MODIFIER...] with NAME one of {tuple(names)} (default {default!r}) and "
                             f"MODIFIER one of {MODIFIERS}")
        seen.add(element)
    return ConfigArg(name, frozenset(seen))


def override(config, values: dict) -> None:
    """Sets dotted keys ('train.num_steps') of a ConfigDict; each must exist already."""
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        if leaf not in node:
            raise KeyError(f"config key {key!r} does not exist")
        node[leaf] = value
