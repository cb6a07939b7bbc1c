"""The bert_jax model directory: what `convert` writes, fine-tuning starts from, and `fill-mask`/`embed` read.

    DIR/model_config.json       BertConfig.to_dict() (scan_layers false: params are stored canonical)
    DIR/params/                 Orbax checkpoint of the canonical float32 tree: 'bert' and, when present, 'cls'
                                (MLM + NSP heads) and a fine-tuning head ('classifier' or 'qa_outputs')
    DIR/vocab.txt | spm.model   the tokenizer, with tokenizer_config.json (bert_jax.tokenizer.save_tokenizer)
    DIR/bert_jax.json           manifest: format version, parts present, parts initialised fresh, task and labels of
                                a fine-tuning head, where the weights came from, conversion warnings

    save_pretrained(DIR, config, params, tokenizer, ...) -> manifest
    load_pretrained(DIR, config_overrides=None) -> Pretrained(config, params, tokenizer)

DIR may be a local directory or a bucket URL (gs://bucket/run/model): the small files go through bert_jax.paths,
the parameters through Orbax, which opens the URL itself.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, NamedTuple, Optional

import numpy as np

from bert_jax import paths
from bert_jax.model import BertConfig

FORMAT = "bert_jax"
FORMAT_VERSION = 1
CONFIG_FILE = "model_config.json"
MANIFEST_FILE = "bert_jax.json"
PARAMS_DIR = "params"


class Pretrained(NamedTuple):
    config: BertConfig
    params: dict  # canonical float32 tree (numpy arrays); scanned only if config_overrides asked for scan_layers
    tokenizer: Any  # bert_jax.tokenizer.Tokenizer


def save_pretrained(directory, config: BertConfig, params: Mapping, tokenizer, *,
                    source: Optional[Mapping] = None, fresh: Iterable[str] = (), task: Optional[str] = None,
                    labels: Optional[list] = None, warnings: Iterable[str] = ()) -> dict:
    """Write a model directory; returns the manifest.

    `params` may be scanned (stored unscanned) and may live on devices (fetched to host). `source` says where the
    weights came from (default: trained with bert_jax), `fresh` which parts were initialised rather than loaded,
    `task`/`labels` describe a fine-tuning head (see convert.HF_ARCHITECTURES for the task names).

    On several processes every one must call this: the Orbax save is collective. Only process 0 writes the small
    files (config, tokenizer, manifest).
    """
    import jax
    import orbax.checkpoint as ocp

    from bert_jax.convert import check_params
    from bert_jax.model import is_scanned, unscan_params
    from bert_jax.tokenizer import save_tokenizer

    directory = paths.absolute(directory)
    params_dir = os.path.join(directory, PARAMS_DIR)
    if paths.exists(params_dir):
        raise ValueError(f"{params_dir} already exists; save to a new directory")
    if is_scanned(params):
        params = unscan_params(params)
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), dict(params))
    config = config.replace(scan_layers=False)
    parts = check_params(params, config, where="save_pretrained")
    writes_files = jax.process_index() == 0
    if writes_files:
        paths.makedirs(directory)
        paths.write_text(os.path.join(directory, CONFIG_FILE), config.to_json() + "\n")
        with paths.written_locally(directory) as local:  # save_tokenizer writes with local-file calls
            save_tokenizer(tokenizer, local)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(paths.for_orbax(params_dir), params)
        checkpointer.wait_until_finished()
    import bert_jax

    manifest = dict(format=FORMAT, format_version=FORMAT_VERSION, bert_jax_version=bert_jax.__version__,
                    parts=parts, fresh=list(fresh), task=task, labels=list(labels) if labels else None,
                    source=dict(source) if source else {"format": "bert_jax"}, warnings=list(warnings))
    if writes_files:  # last: a directory with a manifest is complete
        paths.write_text(os.path.join(directory, MANIFEST_FILE), json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(directory) -> dict:
    path = os.path.join(os.fspath(directory), MANIFEST_FILE)
    _require(path, "the bert_jax manifest")
    manifest = paths.read_json(path)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a bert_jax manifest (format={manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {manifest['format_version']} is newer than this bert_jax "
                         f"reads ({FORMAT_VERSION}); upgrade bert_jax")
    return manifest


def load_config(directory, config_overrides: Optional[Mapping] = None) -> BertConfig:
    path = os.path.join(os.fspath(directory), CONFIG_FILE)
    _require(path, "the model config")
    config = BertConfig.from_dict(paths.read_json(path), source=path)
    if config_overrides:
        unknown = sorted(set(config_overrides) - set(config.to_dict()))
        if unknown:
            raise ValueError(f"config_overrides: unknown BertConfig keys {unknown}")
        config = config.replace(**config_overrides)
    return config


def load_pretrained(directory, config_overrides: Optional[Mapping] = None) -> Pretrained:
    """Read a model directory written by save_pretrained (or `python -m bert_jax convert`).

    `config_overrides` replace fields of model_config.json, e.g. {"dtype": "bfloat16"}; the weights are then
    checked against the result, so an override of a size (vocab_size, hidden_size, num_layers, ...) that does not
    fit them fails naming the tensor. Params come back canonical (layer_N), or scanned if scan_layers=True.
    """
    import orbax.checkpoint as ocp

    from bert_jax.convert import check_params
    from bert_jax.model import scan_params
    from bert_jax.tokenizer import load_tokenizer

    directory = os.fspath(directory)
    if not paths.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such model directory")
    read_manifest(directory)
    config = load_config(directory, config_overrides)
    params_dir = os.path.join(directory, PARAMS_DIR)
    _require(params_dir, "the Orbax parameter checkpoint")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore(paths.for_orbax(params_dir))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ValueError(f"{params_dir}: cannot read the parameter checkpoint ({e})") from None
    check_params(params, config.replace(scan_layers=False),
                 where=f"{os.path.join(directory, CONFIG_FILE)} vs {params_dir}")
    # The tokenizer reads local files: a model directory in a bucket has its small files downloaded first.
    tokenizer = load_tokenizer(paths.download_dir(directory))
    if config.scan_layers:
        params = scan_params(params)
    return Pretrained(config, params, tokenizer)


def _require(path: str, what: str) -> None:
    if not paths.exists(path):
        raise FileNotFoundError(f"{path}: missing ({what}); is {os.path.dirname(path)} a bert_jax model directory "
                                f"(python -m bert_jax convert writes one)?")
