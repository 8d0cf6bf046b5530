"""The image-folder file check remembered per file (dim_tf/data/file_check_cache.py):
a folder checked once opens no image at the next start, a changed, added or removed
file is checked again (and only it), and the cache never fails a run."""

import json
import os

import pytest
from PIL import Image

from dim_tf.data import file_check_cache, image_files, loaders
from dim_tf.data import source as source_lib
from dim_tf.errors import DataError
from tests.faults.image_corpus import Reported, write_corpus
from tests.training.synthetic import write_image_folder


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(file_check_cache.CACHE_DIR_VARIABLE, str(tmp_path / "cache"))
    # The files are written just before they are checked: remember them anyway
    # (test_files_changed_just_before_the_check_are_not_remembered checks the rule).
    monkeypatch.setattr(file_check_cache, "SETTLE_SECONDS", 0.0)
    return tmp_path / "cache" / file_check_cache.FILE_CHECKS_DIR


@pytest.fixture
def folder(tmp_path):
    write_image_folder(tmp_path / "images", {"train": 6, "test": 2})
    return str(tmp_path / "images")


class Spy:
    """Which files a check reads: headers and diagnoses (Pillow opens) and full decodes."""

    def __init__(self, monkeypatch):
        self.opened, self.decoded = [], []
        open_image, records = Image.open, source_lib.folder_records

        def spy_open(path, *args, **kwargs):
            self.opened.append(os.fsdecode(path))
            return open_image(path, *args, **kwargs)

        def spy_records(paths, *args):
            self.decoded += paths
            return records(paths, *args)

        monkeypatch.setattr(image_files.Image, "open", spy_open)
        monkeypatch.setattr(source_lib, "folder_records", spy_records)

    def reset(self):
        self.opened.clear()
        self.decoded.clear()


@pytest.fixture
def spy(monkeypatch):
    return Spy(monkeypatch)


def _check(folder, split="train"):
    """(the source, its unusable files), as training checks them."""
    source = loaders.load_source(f"folder:{folder}", split)
    return source, source_lib.find_bad_images(source, 3)


def _names(source):
    return [os.fsdecode(r["name"]) for r in source.records.as_numpy_iterator()]


def test_a_second_check_of_an_unchanged_folder_opens_no_image(folder, cache_dir, spy, monkeypatch):
    first, first_bad = _check(folder)
    assert len(set(spy.opened)) == len(spy.decoded) == 6
    assert len(os.listdir(cache_dir)) == 1
    spy.reset()

    def refuse(*args):
        raise AssertionError("an image was decoded again")

    monkeypatch.setattr(source_lib, "decode_image", refuse)
    second, second_bad = _check(folder)
    assert spy.opened == spy.decoded == []
    assert second_bad == first_bad == ()
    assert second.num_examples == first.num_examples == 6
    assert _names(second) == _names(first)  # the same records, in the same order


def test_a_changed_file_is_checked_again_and_found_corrupt(folder, spy):
    _check(folder)
    changed = os.path.join(folder, "train", "class_0", "000.jpg")
    with open(changed, "rb") as f:
        data = f.read()
    with open(changed, "wb") as f:  # cut inside the image data: the header still reads
        f.write(data[: data.index(b"\xff\xda") + 100])  # start of scan + 100 bytes
    spy.reset()
    source, bad = _check(folder)
    assert set(spy.opened) == {changed} and spy.decoded == [changed]
    assert [b.path for b in bad] == [changed] and "truncated JPEG" in bad[0].reason
    # ...and remembered as such: the next check reads nothing and reports it again.
    spy.reset()
    assert _check(folder)[1] == bad and spy.opened == spy.decoded == []


def test_same_size_bytes_with_the_old_mtime_are_checked_again(folder, spy):
    """Rewriting a file and setting its mtime back still changes its ctime."""
    _check(folder)
    changed = os.path.join(folder, "train", "class_1", "001.jpg")
    before = os.stat(changed)
    with open(changed, "r+b") as f:
        f.seek(before.st_size - 80)  # in the image data, past the header the listing reads
        f.write(b"\x00" * 64)
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (os.stat(changed).st_size, os.stat(changed).st_mtime_ns) == (before.st_size,
                                                                         before.st_mtime_ns)
    spy.reset()
    _check(folder)
    assert set(spy.opened) == {changed} and spy.decoded == [changed]


def test_a_touched_file_is_checked_again(folder, spy):
    _check(folder)
    touched = os.path.join(folder, "train", "class_0", "002.png")
    stat = os.stat(touched)
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    spy.reset()
    _check(folder)
    assert spy.decoded == [touched]


def test_added_and_removed_files_are_checked_and_forgotten(folder, cache_dir, spy):
    _check(folder)
    added = os.path.join(folder, "train", "class_1", "new.jpg")
    Image.new("RGB", (32, 32), (10, 200, 30)).save(added)
    removed = os.path.join(folder, "train", "class_0", "004.jpg")
    os.remove(removed)
    spy.reset()
    source, bad = _check(folder)
    assert set(spy.opened) == {added} and spy.decoded == [added]
    assert bad == () and source.num_examples == 6
    assert added in _names(source) and removed not in _names(source)
    (cache_file,) = cache_dir.iterdir()
    stored = json.loads(cache_file.read_text())["files"]
    assert "class_1/new.jpg" in stored and "class_0/004.jpg" not in stored


def test_the_same_listing_and_reasons_as_an_unremembered_check_on_hostile_files(tmp_path, spy):
    root = str(tmp_path / "hostile")
    expected = write_corpus(root)
    first, first_bad = _check(root)
    assert {b.path for b in first_bad} == {p for p, e in expected.items() if isinstance(e, Reported)}
    spy.reset()
    second, second_bad = _check(root)
    assert spy.opened == spy.decoded == []  # (reading the records below opens BMP, TIFF, ...)
    assert second_bad == first_bad
    assert _names(second) == _names(first) and second.rejected == first.rejected


@pytest.mark.parametrize("damage", [
    b"{not json", b'{"version": 1, "folder": "/x", "max_pixels": 1, "files": {"a',
    b"[1, 2, 3]", b"\xff\xfe garbage", b'{"version": 999}',
])
def test_a_damaged_cache_file_is_ignored_rewritten_and_logged(folder, cache_dir, spy, caplog, damage):
    _check(folder)
    (cache_file,) = cache_dir.iterdir()
    cache_file.write_bytes(damage)
    spy.reset()
    with caplog.at_level("WARNING", logger="absl"):
        source, bad = _check(folder)
    assert f"Ignoring the file-check cache {cache_file}" in caplog.text
    assert len(spy.decoded) == 6 and bad == () and source.num_examples == 6
    assert len(json.loads(cache_file.read_text())["files"]) == 6


def test_a_damaged_entry_is_a_file_to_check_again(folder, cache_dir, spy):
    _check(folder)
    (cache_file,) = cache_dir.iterdir()
    document = json.loads(cache_file.read_text())
    document["files"]["class_0/000.jpg"] = ["not", "an", "entry"]
    document["files"]["class_1/001.jpg"][-2] = 7  # a header result of the wrong type
    cache_file.write_text(json.dumps(document))
    spy.reset()
    _check(folder)
    assert sorted(os.path.basename(p) for p in spy.decoded) == ["000.jpg", "001.jpg"]


def test_skip_corrupt_or_not_decides_the_same_from_a_remembered_check(folder):
    broken = os.path.join(folder, "train", "class_0", "broken.jpg")
    with open(broken, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    messages = []
    for _ in range(2):  # the first check finds it, the second remembers it
        source = loaders.load_source(f"folder:{folder}", "train")
        with pytest.raises(DataError) as error:
            source_lib.usable_images(source, 3, skip_bad=False)
        messages.append(str(error.value))
        usable = source_lib.usable_images(source, 3, skip_bad=True)
        assert usable.num_examples == 6 and broken not in _names(usable)
        assert usable.corrupt == (broken,)
    assert messages[0] == messages[1] and f"{broken}: " in messages[0]


def test_a_cache_that_cannot_be_written_does_not_fail_the_run(folder, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("the cache folder cannot be made inside a file")
    monkeypatch.setenv(file_check_cache.CACHE_DIR_VARIABLE, str(blocker / "cache"))
    with caplog.at_level("WARNING", logger="absl"):
        source = source_lib.usable_images(loaders.load_source(f"folder:{folder}", "train"), 3,
                                          skip_bad=False)
    assert source.num_examples == 6
    assert "Could not save the file check" in caplog.text


def test_a_read_only_cache_is_still_used(folder, spy, monkeypatch):
    _check(folder)

    def read_only(*args):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(file_check_cache.io, "atomic_write_text", read_only)
    spy.reset()
    source = source_lib.usable_images(loaders.load_source(f"folder:{folder}", "train"), 3,
                                      skip_bad=False)
    assert source.num_examples == 6 and spy.decoded == []
    os.remove(os.path.join(folder, "train", "class_0", "000.jpg"))  # a change it cannot save
    assert _check(folder)[0].num_examples == 5


def test_files_changed_just_before_the_check_are_not_remembered(folder, cache_dir, spy, monkeypatch):
    """Timestamps are coarser than writes: a file changed within SETTLE_SECONDS of the
    check may change again under the same stamp, so it is checked again next time."""
    monkeypatch.setattr(file_check_cache, "SETTLE_SECONDS", 3600.0)
    _check(folder)
    spy.reset()
    _check(folder)
    assert len(spy.decoded) == 6
    assert not cache_dir.exists()  # nothing settled, nothing to write


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(file_check_cache.CACHE_DIR_VARIABLE, str(tmp_path / "mine"))
    assert file_check_cache.cache_dir() == str(tmp_path / "mine" / "file_checks")
    monkeypatch.delenv(file_check_cache.CACHE_DIR_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert file_check_cache.cache_dir() == str(tmp_path / "xdg" / "dim_tf" / "file_checks")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/invalid")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert file_check_cache.cache_dir() == str(tmp_path / "home" / ".cache" / "dim_tf" / "file_checks")
