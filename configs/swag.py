"""SWAG multiple choice: `get_config(arg)` with arg = swag (the default, the only task) and optionally `tiny`.

Each of the 4 endings is encoded as `[CLS] sent1 [SEP] sent2 ending_i [SEP]`; the pooled output of each goes
through a one-output classifier and the 4 scores through a softmax (cross-entropy on the right ending). Recipe
(BERT paper): batch 16, AdamW lr 2e-5 with 10% warmup, 3 epochs, 128 tokens.

    python -m bert_jax finetune --config configs/swag.py --workdir workdirs/swag \\
        --config.init_checkpoint=models/bert-base-uncased --config.data.source=path/to/swagaf/data
        # the folder holds train.csv, val.csv (and test.csv) as released

Modifier `tiny` (`--config configs/swag.py:tiny`, bert_jax/config_args.py): 32 training and 32 validation
questions of at most 64 tokens per ending, 8 steps of batch 8, evaluated every 4 steps: a smoke run.

Expect validation accuracy ~0.81 with BERT-Base (the paper: 81.6 dev, BERT-Large 86.6). <workdir>/predictions
holds `fold-ind,label` CSVs (the chosen ending's index).
"""

from bert_jax import config_args
from bert_jax.finetune import default_config


def get_config(arg=None):
    run = config_args.parse(arg, "configs/swag.py", ("swag",), default="swag")
    config = default_config()
    config.task.name = run.name
    config.data.max_seq_length = 128
    config.optimizer.learning_rate = 2e-5
    config.train.batch_size = 16
    config.train.num_epochs = 3.0
    config.train.log_every = 200
    if run.tiny:
        config_args.override(config, config_args.FINETUNING_TINY)
    return config
