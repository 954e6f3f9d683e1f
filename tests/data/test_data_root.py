from pathlib import Path

from ddsec.data import data_root


def test_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("DDSEC_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_root(str(tmp_path / "explicit")) == tmp_path / "explicit"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("DDSEC_DATA")
    assert data_root() == tmp_path / "xdg" / "ddsec" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "ddsec" / "data"


def test_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_root("~/d") == tmp_path / "d"
    assert isinstance(data_root("x"), Path)
