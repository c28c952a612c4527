import pytest

from erase.io import atomic_dir, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_whole(tmp_path):
    p = tmp_path / "a" / "x.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert [f.name for f in p.parent.iterdir()] == ["x.json"]  # no temp files left


def test_atomic_dir_leaves_old_on_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "f").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(out) as d:
        (d / "f").write_text("half")
        raise RuntimeError("crash")
    assert (out / "f").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
