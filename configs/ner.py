"""Named-entity recognition: `get_config(arg)` with arg = conll2003 (the default, the only task so far) and
optionally `tiny`.

CoNLL-2003 English with IOB2 tags; each word is tagged from its first word piece (the others are ignored by the
loss), sentences longer than a window are split at word boundaries. Recipe: batch 32, AdamW lr 5e-5 with 10%
warmup, 3 epochs, 128 tokens. The best weights by entity-level F1 on the validation set go to <workdir>/model;
<workdir>/predictions holds the CoNLL columns with the predicted tag appended (conlleval's layout).

    python -m bert_jax finetune --config configs/ner.py:conll2003 --workdir workdirs/conll2003 \\
        --config.init_checkpoint=models/bert-base-cased --config.data.source=../shared/data/conll2003

Modifier `tiny` (`configs/ner.py:conll2003,tiny`, bert_jax/config_args.py): 32 training and 32 validation
sentences in windows of 64 tokens, 8 steps of batch 8, evaluated every 4 steps: a smoke run.

Expect entity F1 ~0.95 on validation and ~0.91 on test with BERT-Base cased (the paper: 96.4 dev / 92.4 test,
with document context; this per-sentence setup is a little lower). Use a cased model: capitalisation is much of
the signal for names.
"""

from bert_jax import config_args
from bert_jax.finetune import default_config


def get_config(arg=None):
    run = config_args.parse(arg, "configs/ner.py", ("conll2003",), default="conll2003")
    config = default_config()
    config.task.name = run.name
    config.data.source = "tfds"
    config.data.max_seq_length = 128
    config.optimizer.learning_rate = 5e-5
    config.train.batch_size = 32
    config.train.num_epochs = 3.0
    config.train.log_every = 100
    if run.tiny:
        config_args.override(config, config_args.FINETUNING_TINY)
    return config
