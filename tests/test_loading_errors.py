"""Loading errors for damaged or incomplete models and an unreachable hub: one line that names the file or model
and says how to fix it, quickly."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import huggingface_hub
import pytest

import specdec.loading as loading
from specdec import GenerationConfig, SpeculativeEngine, load_model
from specdec.errors import ConfigError, ModelLoadError


def _copy_folder(source, destination, skip=()):
    destination.mkdir(parents=True)
    for path in source.iterdir():
        if path.name not in skip:
            shutil.copy(path, destination / path.name)
    return destination


@pytest.mark.parametrize("keep_bytes", [5, 100, -10], ids=["header-cut", "metadata-cut", "data-cut"])
def test_a_truncated_weights_file_is_named_as_corrupt_with_how_to_fix_it(model_folders, tmp_path, keep_bytes):
    folder = _copy_folder(model_folders["target"], tmp_path / "model")
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as handle:
        handle.truncate(keep_bytes if keep_bytes > 0 else size + keep_bytes)
    with pytest.raises(ModelLoadError) as error:
        load_model(str(folder), device="cpu")
    message = str(error.value)
    assert str(weights) in message and "corrupt or truncated" in message
    assert "re-save" in message and "save_pretrained" in message
    assert "\n" not in message


def test_a_file_given_as_the_model_says_a_folder_is_expected(model_folders):
    config = model_folders["target"] / "config.json"
    with pytest.raises(ModelLoadError) as error:
        load_model(str(config), device="cpu")
    message = str(error.value)
    assert "is a file, not a folder" in message and "does not exist" not in message
    assert "config.json" in message and repr(str(model_folders["target"])) in message


def test_a_folder_without_tokenizer_files_runs_on_token_ids_and_names_the_missing_files(model_folders, tmp_path):
    folder = _copy_folder(
        model_folders["target"], tmp_path / "no-tokenizer", skip={"tokenizer.json", "special_tokens_map.json"}
    )
    target = load_model(str(folder), device="cpu")
    assert target.tokenizer is None
    engine = SpeculativeEngine(target)
    result = engine.generate([5, 6, 7], GenerationConfig(max_new_tokens=3, stop_at_eos=False))
    assert len(result.token_ids[0]) == 3
    with pytest.raises(ConfigError) as error:
        engine.generate("def f(", GenerationConfig(max_new_tokens=3))
    message = str(error.value)
    assert "sentencepiece" not in message
    assert "tokenizer.json" in message and "vocab" in message and "it has only tokenizer_config.json" in message
    assert "token ids" in message and str(folder) in message


def test_a_folder_with_a_broken_tokenizer_names_its_tokenizer_files(model_folders, tmp_path):
    folder = _copy_folder(model_folders["target"], tmp_path / "bad-tokenizer")
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as error:
        load_model(str(folder), device="cpu")
    message = str(error.value)
    assert "tokenizer of model" in message and "tokenizer.json" in message and "save_pretrained" in message
    assert "sentencepiece" not in message and "\n" not in message


def test_transformers_offline_alone_is_enough_and_is_named(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert loading.hub_offline()
    with pytest.raises(ModelLoadError, match="TRANSFORMERS_OFFLINE is set"):
        load_model("some-org/not-a-cached-model", device="cpu")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_uncached_hub_id_fails_fast_when_the_hub_cannot_be_reached(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as error:
        load_model("some-org/not-a-cached-model", device="cpu")
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert "'some-org/not-a-cached-model' is not in the local Hugging Face cache" in message
    assert "the hub cannot be reached" in message and "hf download" in message


def test_the_hub_probe_is_bounded_even_when_the_connect_hangs(monkeypatch):
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)  # until the test is over: the probe thread then ends without touching later tests
        raise OSError("connect released by the test")

    monkeypatch.setattr(socket, "create_connection", hang)
    started = time.perf_counter()
    try:
        reason = loading.hub_unreachable(timeout_s=0.3)
    finally:
        release.set()
    assert time.perf_counter() - started < 2
    assert reason is not None and "did not answer within 0.3 s" in reason


def test_a_cached_hub_id_loads_from_the_cache_without_reaching_the_network(model_folders, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    cache = tmp_path / "hub"
    repo = cache / "models--some-org--cached-model"
    _copy_folder(model_folders["target"], repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError("a cached model must not reach the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    target = load_model("some-org/cached-model", device="cpu")
    assert target.source == "hub" and target.tokenizer is not None
