"""Official SQuAD v1.1 / v2.0 metrics of a predictions file, printed as JSON.

    python -m bert_jax evaluate-squad --data dev-v1.1.json --predictions predictions.json
    python -m bert_jax evaluate-squad --data dev-v2.0.json --predictions predictions.json \\
        --na-probs null_odds.json --na-prob-thresh 1.0

v1.1 prints {"exact_match", "f1"}; v2.0 (detected from the data file) prints exact, f1, total, the HasAns_ and
NoAns_ subsets and, with --na-probs, best_exact / best_f1 and their thresholds, following the semantics of
the official evaluate-v1.1.py and evaluate-v2.0.py. Questions missing from the predictions score 0 and are
counted in "missing" (and reported on stderr).
"""

import json
import sys

from absl import flags

flags.DEFINE_string("data", None, "SQuAD JSON file with the gold answers (e.g. dev-v1.1.json).")
flags.DEFINE_string("predictions", None, "JSON object: question id -> predicted answer text.")
flags.DEFINE_string("na-probs", None, "v2.0: JSON object: question id -> probability (or odds) of no answer.")
flags.DEFINE_float("na-prob-thresh", 1.0, "v2.0: predict no answer when the na-prob exceeds this.")
flags.DEFINE_enum("version", None, ["1.1", "2.0"], "Scoring rules; by default read from the data file.")
flags.mark_flags_as_required(["data", "predictions"])

FLAGS = flags.FLAGS


def _load_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} file {path} is not valid JSON ({error})") from None


def _load_mapping(path: str, what: str, value_type):
    mapping = _load_json(path, what)
    if not isinstance(mapping, dict):
        raise ValueError(f"{what} file {path} must hold a JSON object mapping question ids to values")
    bad = [k for k, v in mapping.items() if not isinstance(v, value_type) or isinstance(v, bool)]
    if bad:
        raise ValueError(f"{what} file {path}: {len(bad)} value(s) of the wrong type, e.g. for {bad[0]!r}")
    return mapping


def main(argv):
    if len(argv) > 1:
        print(f"evaluate-squad: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    from bert_jax.tasks import metrics

    try:
        dataset = _load_json(FLAGS.data, "data")
        if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
            raise ValueError(f"data file {FLAGS.data} is not a SQuAD file (no 'data' list)")
        predictions = _load_mapping(FLAGS.predictions, "predictions", str)
        na_path = FLAGS["na-probs"].value
        na_probs = _load_mapping(na_path, "na-probs", (int, float)) if na_path else None
        result = metrics.squad_evaluate(dataset, predictions, na_probs=na_probs,
                                        na_prob_thresh=FLAGS["na-prob-thresh"].value, version=FLAGS.version)
    except (FileNotFoundError, ValueError) as error:
        print(f"evaluate-squad: error: {error}", file=sys.stderr)
        return 1
    if result.get("missing"):
        print(f"evaluate-squad: {result['missing']} question(s) have no prediction and score 0", file=sys.stderr)
    print(json.dumps(result))
    return 0
