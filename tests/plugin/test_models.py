"""The session's model cache: a hub model it cannot load says how to allow downloads, unless the user is offline."""

from __future__ import annotations

import pytest

from pytest_specdec.models import DOWNLOAD_HINT, ModelCache
from specdec.errors import SpecdecError


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", None])
def test_the_download_hint_is_only_given_to_a_user_who_is_not_offline(monkeypatch, tmp_path, variable):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty Hugging Face cache
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    if variable is not None:
        monkeypatch.setenv(variable, "1")
    with pytest.raises(SpecdecError) as error:
        ModelCache(allow_download=False).get(("specdec-test/not-cached", "cpu", "float32"))
    assert str(error.value).endswith(DOWNLOAD_HINT) == (variable is None)
