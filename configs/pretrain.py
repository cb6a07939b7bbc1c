"""BERT pretraining (MLM + NSP): `get_config(arg)` with arg = NAME[,tiny], NAME = builtin (default) or a model size
(tiny, mini, small, medium, base, large).

The built-in run (no data, no download; minutes on a laptop CPU):

    python -m bert_jax pretrain

  writes CPython's documentation as a corpus, trains an 8,000-piece WordPiece vocabulary on it, then
  pretrains a tiny BERT (L2/H128) for 600 steps of 32 sequences of 64 tokens (building the corpus and the
  vocabulary happens once; later runs reuse them). Expect the loss to fall from ~11
  (ln 8000 + ln 2) to ~7 within 100 steps (word frequencies) and on to ~6.6, with a masked-LM accuracy of
  ~0.1 (measured: 6.64 / 0.11 at step 600); a model this small and short-trained predicts frequent words
  ("the", "of", ".") for most blanks. Checkpoints,
  metrics.jsonl and TensorBoard events land in workdirs/pretrain_builtin, the model in
  workdirs/pretrain_builtin/model, and a few fill-mask predictions are printed at the end:

    python -m bert_jax fill-mask --checkpoint workdirs/pretrain_builtin/model "Return a new [MASK] of the list."

The original recipe at a given size (tiny, mini, small, medium, base, large; SPEC §3): AdamW lr 1e-4,
batch 256, 1M steps, 10k warmup, 90% of the steps at length 128 (20 masked positions) then 512 (80),
bf16 compute with float32 parameters:

    python -m bert_jax pretrain --config configs/pretrain.py:base --workdir workdirs/bert_base \\
        --config.data.input_files=../shared/data/wikipedia \\
        --config.data.vocab_file=../shared/data/vocab/bert-base-uncased-vocab.txt

  Devlin et al. trained BERT-Base this way for 4 days on 4 Cloud TPUs (16 chips), on Wikipedia +
  BookCorpus. Shrink for a try-out with e.g.
  --config.train.num_steps=2000 --config.optimizer.warmup_steps=200
  --config.phases="({'fraction': 1.0, 'seq_length': 128, 'batch_size': 32, 'max_predictions': 20},)".
  Larger global batches on small devices:
  --config.train.micro_batches=8 (gradient accumulation); on a pod slice: --config.mesh.fsdp=-1.
  Continued pretraining from a converted Google checkpoint: --config.train.init_checkpoint=DIR.

Modifier `tiny` (bert_jax/config_args.py; `configs/pretrain.py:tiny` alone is the tiny model's recipe, a name):
the same run shrunk for tests and smoke runs: the tiny model with 64 positions, the phases at 32 and 64 tokens of
8 sequences, 20 steps (warmup 2), evaluation and checkpoints every 10 steps, one pass over the corpus (the built-in
one cut to 20 documents and a 400-piece vocabulary). The source, the optimizer and the dtype stay, e.g.

    python -m bert_jax pretrain --config configs/pretrain.py:builtin,tiny --workdir /tmp/pretrain_tiny
    python -m bert_jax pretrain --config configs/pretrain.py:base,tiny --config.model.dtype=float32 \\
        --config.data.input_files=corpus.txt --config.data.vocab_file=vocab.txt --workdir /tmp/base_tiny

TFRecords instead of text (prepare-pretraining-data's, or Google's create_pretraining_data.py's; told apart from
text by their content, --config.data.format=text|tfrecord forces it): records have one length, so each phase names
its own, e.g. --config.data.input_files=data/records128 and, in the second phase's dict,
'input_files': 'data/records512' (an empty or missing input_files reads data.input_files). Each phase's
seq_length and max_predictions are checked against the first record of every file before anything compiles.

Sequence packing (--config.data.packing=True, off by default; bert_jax/data/packing.py, SPEC §5) carries each phase's
batch_size instances in fewer rows of seq_length tokens, up to data.packing_max_instances (4) per row, each
attending only to itself: a phase of batch 256 at 512 tokens stays 256 instances per step (the learning rate keeps
its meaning) but runs in the rows the first batch's instances fill plus 15% (at 512 on Wikipedia, where 40% of
the tokens are real, 8 instances took 5 rows), kept for the phase (data.packing_rows fixes them). The losses equal
those of the unpacked instances.
"""

from bert_jax import config_args
from bert_jax.pretrain import default_config

SIZES = ("tiny", "mini", "small", "medium", "base", "large")
# What `tiny` makes of each phase (the runs above have one or two): its fraction and input_files stay.
TINY_PHASES = (dict(seq_length=32, batch_size=8, max_predictions=5), dict(seq_length=64, batch_size=8,
                                                                         max_predictions=10))

# Sentences in the style of the built-in corpus; the final model's guesses for [MASK] are printed.
BUILTIN_FILL_MASK = (
    "Return a new [MASK] of the list.",
    "If the file does not exist, an [MASK] is raised.",
    "This module provides functions for working with [MASK] and directories.",
)


def get_config(arg=None):
    run = config_args.parse(arg, "configs/pretrain.py", ("builtin", *SIZES), default="builtin")
    config = default_config()
    if run.name == "builtin":
        config.model.size = "tiny"
        config.data.source = "builtin"
        config.data.builtin_vocab_size = 8000
        # Short sequences (the docs' sentences are short) and no dropout: a few minutes of training should
        # show learning, not regularise. 1e-3 kept this post-LN model at the unigram plateau (~6.9) for 600
        # steps; 3e-4 moves past it.
        config.model.hidden_dropout_rate = 0.0
        config.model.attention_dropout_rate = 0.0
        config.phases = (dict(fraction=1.0, seq_length=64, batch_size=32, max_predictions=10),)
        config.optimizer.learning_rate = 3e-4
        config.optimizer.warmup_steps = 60
        config.train.num_steps = 600
        config.train.log_every = 20
        config.train.eval_every = 200
        config.train.eval_batches = 4
        config.train.checkpoint_every = 200
        config.train.keep_every = 0
        config.fill_mask_examples = BUILTIN_FILL_MASK
    else:
        config.model.size = run.name
        config.model.dtype = "bfloat16"  # matmuls in bf16 on accelerators; parameters and Adam moments float32
        config.data.source = "files"
    if run.tiny:
        shrink(config)
    return config


def shrink(config) -> None:
    """The `tiny` modifier: every size of the run made small; nothing else changes."""
    config.phases = tuple(dict(phase, **tiny) for phase, tiny in zip(config.phases, TINY_PHASES))
    config_args.override(config, {
        "model.size": "tiny",
        "model.max_position_embeddings": 64,
        "data.dupe_factor": 1,
        "data.builtin_max_documents": 20,
        "data.builtin_vocab_size": 400,
        "optimizer.warmup_steps": 2,
        "train.num_steps": 20,
        "train.log_every": 1,
        "train.eval_every": 10,
        "train.eval_batches": 2,
        "train.checkpoint_every": 10,
        "train.keep_every": 0,
    })
