"""Your own text classification or regression: `get_config(arg)` with arg = KIND[,tiny], KIND = classification
(default) or regression.

Files: a folder with train.csv / train.tsv / train.jsonl and dev (validation, valid, val) and optionally test files
of the same kind, or single files given with --config.data.train / dev / test. CSV is quoted as usual, TSV is
read unquoted, JSONL has one object per line; rows with the wrong column count, an empty text or a bad label are
skipped and listed (how many, where, why) before training.

    python -m bert_jax finetune --config configs/classify.py --workdir workdirs/reviews \\
        --config.init_checkpoint=models/bert-base-uncased --config.data.source=my_data \\
        --config.task.text_column=review --config.task.label_column=stars
    # sentence pairs: --config.task.text_pair_column=hypothesis
    # fixed label order: --config.task.labels="('negative', 'neutral', 'positive')" (default: sorted from train)
    python -m bert_jax finetune --config configs/classify.py:regression ... --config.task.label_column=score

Modifier `tiny` (`configs/classify.py:tiny`, `configs/classify.py:regression,tiny`; bert_jax/config_args.py): 32
training and 32 dev rows of at most 64 tokens, 8 steps of batch 8, evaluated every 4 steps: a smoke run.

Recipe as for GLUE: batch 32, lr 3e-5, 10% warmup, 3 epochs, 128 tokens. Classification reports accuracy and
macro F1 (the best checkpoint by accuracy), regression Pearson, Spearman and MSE (best by Pearson). Predictions:
<workdir>/predictions/classify_<split>_predictions.tsv (id, prediction[, label]); then
`python -m bert_jax predict --checkpoint <workdir>/model --input new.csv --output predictions.tsv`.
"""

from bert_jax import config_args
from bert_jax.finetune import default_config

KINDS = ("classification", "regression")


def get_config(arg=None):
    run = config_args.parse(arg, "configs/classify.py", KINDS, default="classification")
    config = default_config()
    config.task.name = "classify"
    config.task.kind = run.name
    config.task.text_column = "text"
    config.task.label_column = "label"
    config.data.max_seq_length = 128
    config.optimizer.learning_rate = 3e-5
    config.train.batch_size = 32
    config.train.num_epochs = 3.0
    if run.tiny:
        config_args.override(config, config_args.FINETUNING_TINY)
    return config
