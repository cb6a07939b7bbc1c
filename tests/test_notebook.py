"""Executes notebooks/pretrain_colab.ipynb on CPU with nbclient, shrunk to a smoke run.

BERT_JAX_NOTEBOOK_SMOKE=1 makes the notebook train for a dozen steps on 60 documents of the built-in corpus
with a 2,000-piece vocabulary. The kernel starts in notebooks/, as Jupyter would open the file, so the
install cell has to find the checkout one level up; everything is importable, so it must install nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "pretrain_colab.ipynb"
SMOKE_STEPS = 12  # NUM_STEPS of the notebook's smoke setting


def cell_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def test_notebook_is_valid_and_has_no_stored_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "clear outputs before committing"
    assert notebook.metadata.kernelspec.name == "python3"


def test_notebook_pretrains_and_fills_masks_on_cpu(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    report = tmp_path / "report.json"
    monkeypatch.setenv("BERT_JAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("BERT_JAX_NOTEBOOK_WORKDIR", str(workdir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the notebook must find the checkout itself

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # One extra cell hands the notebook's results to the test.
    notebook.cells.append(new_code_cell(
        f"import json\njson.dump({{'texts': texts, 'predictions': predictions, 'runtime': RUNTIME, "
        f"'vocab': model.tokenizer.inv_vocab, 'steps': int(state.step)}}, open({str(report)!r}, 'w'))"))
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, if any cell fails

    outputs = "\n".join(cell_text(c) for c in notebook.cells if c.cell_type == "code")
    assert "nothing to install" in outputs and "installing" not in outputs
    result = json.loads(report.read_text())
    assert result["runtime"] == "CPU"
    assert result["steps"] == SMOKE_STEPS

    # The run: logged steps up to the last one, finite losses, and the loss fell (from about ln 2000 + ln 2).
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert train and train[-1]["step"] == SMOKE_STEPS
    losses = [r["loss"] for r in train]
    assert all(math.isfinite(x) for x in losses)
    assert losses[0] < math.log(2000) + math.log(2) + 1.0
    # Batches of 8 make single steps noisy: compare the first and last thirds.
    third = max(1, len(losses) // 3)
    assert sum(losses[-third:]) / third < sum(losses[:third]) / third - 0.5, losses

    # Fill-mask: per text, 5 distinct vocabulary tokens with probabilities in decreasing order, each inserted
    # in place of [MASK] in the returned sequence; the table printed by the notebook shows the same tokens.
    vocab = result["vocab"]
    assert len(result["predictions"]) == len(result["texts"]) == 3
    for text, top in zip(result["texts"], result["predictions"]):
        assert len(top) == 5
        scores = [p["score"] for p in top]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-5
        assert len({p["token"] for p in top}) == 5
        for p in top:
            assert vocab[p["token"]] == p["token_str"]
            prefix = text.split("[MASK]")[0].strip().lower()
            assert p["sequence"].startswith(prefix[:10]), (p["sequence"], text)
        assert ", ".join(f"{p['token_str']} ({p['score']:.2f})" for p in top) in outputs
