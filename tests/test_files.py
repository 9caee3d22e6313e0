"""Files: a rendered CONFIG destination is written whole or not at all (a short write is
continued; a full disk or the file size limit leaves the file as it was, and no temporary file),
never through a link planted at the temporary file's name, keeping the mode it had, and in place
where only the file itself is writable."""

import errno
import os
import resource
import threading

import pytest

import kubernetes_entrypoint as ke
from templates import config_deps, config_env, left_in, make_template, make_template_in, rendered


# Item 1: a CONFIG file is written completely or not at all ------------------------------------

def test_concurrent_reader_never_sees_half_a_file(tmp_path):
    big = "line {{ .IP }}\n" * 20000
    make_template(tmp_path / "configmaps", "big.conf", big)
    destination = tmp_path / "big.conf"
    [dep] = config_deps(tmp_path, str(destination))
    assert ke.check_config(dep, None).met
    whole = destination.read_text()
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(destination.read_text() == whole)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(30):
            assert ke.check_config(dep, None).met
    finally:
        stop.set()
        thread.join()
    assert seen and all(seen)


def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.mark.parametrize("old", [None, b"old bytes\n"])
def test_item1_config_beyond_the_file_size_limit_is_not_written(tmp_path, spawn, old):
    """issue 7 item 1: a write cut short by RLIMIT_FSIZE must not be renamed into place."""
    make_template_in(tmp_path, "big.conf", "line {{ .IP }}\n" * 4500)  # 67,500 bytes rendered
    destination = tmp_path / "etc" / "big.conf"
    destination.parent.mkdir()
    if old is not None:
        destination.write_bytes(old)
    run = spawn(dict(config_env(tmp_path, destination), ENTRYPOINT_TIMEOUT="2"),
                preexec_fn=limit_file_size)
    assert run.finish() == 1, (run.stdout, run.stderr)
    assert run.report() is None  # the command never ran
    if old is None:
        assert not destination.exists()
    else:
        assert destination.read_bytes() == old
    assert left_in(destination.parent) == ([] if old is None else ["big.conf"])
    assert "cannot write" in run.stderr


def test_item1_short_writes_are_continued(tmp_path, monkeypatch):
    """issue 7 item 1: os.write may write less than it is given; the rest must follow."""
    text = "".join("line %05d\n" % i for i in range(2000))
    dep = rendered(tmp_path, text)
    real_write = os.write

    def half_write(fd, data):
        return real_write(fd, data[:max(1, len(data) // 2)])

    with monkeypatch.context() as patch:
        patch.setattr(ke.os, "write", half_write)
        verdict = ke.check_config(dep, None)
    assert verdict.met, verdict.reason
    assert (tmp_path / "etc" / "x.conf").read_bytes() == text.encode()
    assert left_in(tmp_path / "etc") == ["x.conf"]


@pytest.mark.parametrize("old", [None, b"old bytes\n"])
def test_item1_disk_full_mid_write_leaves_nothing(tmp_path, monkeypatch, old):
    """issue 7 item 1: ENOSPC after a partial write: not met, the destination as it was, no temp."""
    text = "".join("line %05d\n" % i for i in range(2000))
    dep = rendered(tmp_path, text, old)
    real_write, calls = os.write, []

    def write_then_enospc(fd, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data[:len(data) // 2])

    with monkeypatch.context() as patch:
        patch.setattr(ke.os, "write", write_then_enospc)
        verdict = ke.check_config(dep, None)
    assert not verdict.met
    destination = tmp_path / "etc" / "x.conf"
    if old is None:
        assert not destination.exists()
    else:
        assert destination.read_bytes() == old
    assert left_in(tmp_path / "etc") == ([] if old is None else ["x.conf"])


def test_unwritable_destination_is_not_met_and_retried(tmp_path):
    make_template(tmp_path / "configmaps", "x.conf", "{{ .IP }}")
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where a directory should be")
    [dep] = config_deps(tmp_path, str(blocker / "x.conf"))
    verdict = ke.check_config(dep, None)
    assert not verdict.met and verdict.reason.startswith("cannot write")
    blocker.unlink()
    assert ke.check_config(dep, None).met


# Item 2: the temporary file's name is not predictable, and it is never followed ---------------

def test_item2_planted_symlinks_at_guessable_temporary_names_are_not_followed(tmp_path):
    """issue 7 item 2: `.<name>.<pid>.tmp` symlinked to a victim must not redirect the write."""
    dep = rendered(tmp_path, "new content\n")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    directory = tmp_path / "etc"
    guesses = {os.getpid(), os.getppid(), threading.get_native_id(), 1}
    guesses |= set(range(os.getpid() - 5, os.getpid() + 6))
    planted = [".x.conf.%d.tmp" % pid for pid in guesses] + [".x.conf.tmp", "x.conf.tmp"]
    for name in planted:
        os.symlink(str(victim), str(directory / name))
    ke.write_file_atomically(dep.path, dep.content)
    assert victim.read_bytes() == b"precious\n"
    assert not os.path.islink(dep.path)
    assert (directory / "x.conf").read_bytes() == b"new content\n"
    assert left_in(directory) == sorted(planted + ["x.conf"])  # no temporary file of its own left


# The destination's mode, and a file mounted alone ---------------------------------------------

def test_existing_mode_is_kept(tmp_path):
    make_template(tmp_path / "configmaps", "app.conf", "ip={{ .IP }}\n")
    destination = tmp_path / "app.conf"
    destination.write_text("old")
    destination.chmod(0o600)
    [dep] = config_deps(tmp_path, str(destination))
    assert ke.check_config(dep, None).met
    assert destination.read_text() == "ip=127.0.0.1\n"
    assert destination.stat().st_mode & 0o777 == 0o600
    assert [n for n in os.listdir(str(tmp_path)) if n.endswith(".tmp")] == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to drop to another user")
def test_single_file_in_read_only_directory_is_written_in_place(tmp_path):
    """A file mounted alone into a directory this user cannot write: no temporary file beside it."""
    import shutil
    import tempfile
    make_template(tmp_path / "configmaps", "x.conf", "ip={{ .IP }}\n")
    [dep] = config_deps(tmp_path, "/somewhere/x.conf")
    directory = tempfile.mkdtemp()
    try:
        destination = os.path.join(directory, "x.conf")
        with open(destination, "w") as f:
            f.write("old")
        os.chmod(destination, 0o666)
        os.chmod(directory, 0o555)
        dep.path = destination
        pid = os.fork()
        if pid == 0:
            try:
                os.setuid(65534)
                os._exit(0 if ke.check_config(dep, None).met else 1)
            except BaseException:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        with open(destination) as f:
            assert f.read() == "ip=127.0.0.1\n"
    finally:
        os.chmod(directory, 0o755)
        shutil.rmtree(directory)
