import os

import pytest

from erase.errors import EraseError
from erase.io import atomic_dir, atomic_write_json, atomic_write_text, check_out_dir, output_lock


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


def test_output_lock_refuses_a_second_writer_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, "erase audit --steps 10"):
        # flock locks belong to one open file: a second open, even in this process, is refused
        with pytest.raises(EraseError, match=rf"in use by erase audit --steps 10 \(pid {os.getpid()} on "), \
                output_lock(out, "erase audit --steps 11"):
            pass
        assert (tmp_path / ".out.lock").is_file()
    assert list(tmp_path.iterdir()) == []  # released and removed; nothing else made
    with output_lock(out, "again"):
        pass


def test_stale_temp_of_a_killed_write_is_removed_under_the_lock(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "f").write_text("v1")
    killed = atomic_dir(out)
    tmp = killed.__enter__()  # a write that never finished (as under kill -9: no clean-up ran)
    (tmp / "f").write_text("half")
    (out / ".results.json.abcd1234.tmp").write_text("half")  # a file write killed inside the folder
    (tmp_path / "keep.tmp").write_text("not ours")
    with output_lock(out, "test"):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "keep.tmp", "out"]
        assert [p.name for p in out.iterdir()] == ["f"] and (out / "f").read_text() == "v1"


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("x"), "exists and is not a folder"),
    (lambda p: p.symlink_to(p), "symlink loop"),
    (lambda p: (p.parent / "file").write_text("x") or None, None),
])
def test_check_out_dir_is_one_line_and_creates_nothing(tmp_path, make, message):
    target = tmp_path / "out"
    make(target)
    before = sorted(p.name for p in tmp_path.iterdir())
    if message is None:  # a folder under a file
        with pytest.raises(EraseError, match="is not a folder"):
            check_out_dir(tmp_path / "file" / "run")
    else:
        with pytest.raises(EraseError, match=message):
            check_out_dir(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert check_out_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run" and not (tmp_path / "new").exists()


def test_a_kill_between_the_two_renames_gets_the_old_folder_back(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "f").write_text("v1")
    out.rename(tmp_path / ".out.old-12345")  # atomic_dir's first rename done, the second never ran
    with output_lock(out, "test"):
        assert (out / "f").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]
