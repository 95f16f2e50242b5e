"""`hexcore retriever ...` administration, and a failed retriever run leaving the serving state as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hexcore.cli import main
from hexcore.settings import get_settings
from knowledge.retriever_store import RetrieverStore


@pytest.fixture
def state(tmp_path: Path, data_dir: Path, monkeypatch) -> Path:
    monkeypatch.setenv("HEXCORE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HEXCORE_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    yield tmp_path / "state"
    get_settings.cache_clear()


def _version(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_text(name)
    return folder


def test_list_promote_and_roll_back_the_reranker(state: Path, tmp_path: Path):
    runner = CliRunner()
    out = runner.invoke(main, ["retriever", "list", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == {
        "embedder": {"serving": None, "versions": {}},
        "reranker": {"serving": None, "versions": {}},
    }
    store = RetrieverStore(state / "retrievers")
    store.save_new("reranker", _version(tmp_path, "a"), {"metrics": {"mrr": 0.5}})
    assert runner.invoke(main, ["retriever", "promote", "reranker", "v1"]).exit_code == 0
    out = runner.invoke(main, ["retriever", "list"])
    assert "reranker: *v1" in out.output and "embedder: (none)" in out.output
    out = runner.invoke(main, ["retriever", "rollback", "reranker"])
    assert out.exit_code == 0 and "untrained" in out.output
    out = runner.invoke(main, ["retriever", "rollback", "reranker"])
    assert out.exit_code == 1 and "nothing to roll back" in out.output and "Traceback" not in out.output
    out = runner.invoke(main, ["retriever", "promote", "reranker", "v7"])
    assert out.exit_code == 1 and "does not exist" in out.output


def test_train_retriever_refuses_a_second_mode(state: Path):
    out = CliRunner().invoke(main, ["train", "--retriever", "--router"])
    assert out.exit_code == 2 and "use one of" in out.output


def test_an_interrupted_run_promotes_nothing_and_leaves_the_index(state: Path, monkeypatch):
    import training.retriever_pipeline as pipeline

    index = state / "index" / "vectors"
    index.mkdir(parents=True)
    (index / "manifest.json").write_text('{"model": "all-MiniLM-L6-v2"}')
    before = (index / "manifest.json").read_text()
    monkeypatch.setattr(pipeline, "mrr_dense", lambda *a, **k: {"mrr": 0.3})  # skip embedding 3,000 rules

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train_embedder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_retriever_training(get_settings())
    store = RetrieverStore(state / "retrievers")
    assert store.serving("embedder") is None and store.versions("embedder") == []
    assert (index / "manifest.json").read_text() == before


def test_the_nightly_job_retrains_the_retriever_only_with_enough_helpful_answers(state: Path, monkeypatch):
    import training.retriever_pipeline as retriever_pipeline
    from training.pipeline import _retrain_retriever

    calls = []
    monkeypatch.setattr(
        retriever_pipeline,
        "run_retriever_training",
        lambda settings, feedback: (
            calls.append(len(feedback)) or type("R", (), {"to_json": lambda self: {"ok": 1}})()
        ),
    )
    helpful = [{"question": "q", "score": 1}] * 3 + [{"question": "q", "score": -1}] * 5
    assert "needs 4" in _retrain_retriever(get_settings(), helpful, 4)["skipped"]
    assert _retrain_retriever(get_settings(), helpful, 3) == {"ok": 1} and calls == [8]

    def broken(settings, feedback):
        raise RuntimeError("disk full")

    monkeypatch.setattr(retriever_pipeline, "run_retriever_training", broken)
    assert _retrain_retriever(get_settings(), helpful, 3) == {"error": "RuntimeError: disk full"}
