"""The run folder: it never deletes or replaces a file that cnnlab did not write, a run without
--out gets a new folder, operating-system errors are one line, files follow the umask, and
a run's weights must belong to its config."""

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnnlab import cli
from cnnlab.data import load
from cnnlab.errors import CnnlabError, ModelError, StorageError
from cnnlab.train import CHECKPOINT, CONFIG, METRICS, WEIGHTS, TrainConfig, checkpoint, train
from cnnlab.train import run as run_mod
from cnnlab.train.run import OWN, RunFolder, claim, inventory, is_run_config, load_run

TINY = ["--epochs", "1", "--batch-size", "256", "--device", "cpu", "--quiet", "--no-plots",
        "--no-tensorboard"]           # lenet5_modern, 6 steps on the embedded digits


@pytest.fixture(scope="module")
def digits():
    train_ds, test_ds = load("digits", "train", size=32), load("digits", "test", size=32)
    return train_ds.subset(torch.arange(64)), test_ds.subset(torch.arange(20))


def tiny_run(out, digits, **kw):
    values = {"model": "lenet5_modern", "epochs": 1, "batch_size": 32, "device": "cpu",
              "out": None if out is None else str(out), "plots": False, "tensorboard": False}
    return train(TrainConfig(**{**values, **kw}), progress=False, datasets=digits)


def user_folder(path: Path) -> dict[str, bytes]:
    """A folder of someone else's files, some with cnnlab's names: what it holds."""
    path.mkdir()
    files = {"notes.txt": b"my notes\n", CONFIG: b'{"learning_rate": 3}\n',
             METRICS: b'{"step": 1}\n', "data.csv": b"1,2\n"}
    for name, body in files.items():
        (path / name).write_bytes(body)
    return files


# -- item 1: nothing that cnnlab did not write is deleted or replaced ----------------------

def test_a_folder_of_other_files_is_refused_and_left_as_it_was(tmp_path, capsys):
    files = user_folder(tmp_path / "mine")
    assert cli.main(["train", "lenet5_modern", *TINY, "--out", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --out '{tmp_path / 'mine'}' holds files that cnnlab did not write "
                   f"({CONFIG}, data.csv, {METRICS} and 1 more); pick a new or empty folder, or "
                   "pass --overwrite to train there anyway (your files stay; only cnnlab's own, "
                   f"{', '.join(OWN)}, are replaced)\n")
    assert {p.name: p.read_bytes() for p in (tmp_path / "mine").iterdir()} == files


def test_overwrite_replaces_only_cnnlabs_own_files(tmp_path):
    files = user_folder(tmp_path / "mine")
    (tmp_path / "mine" / "sub").mkdir()
    (tmp_path / "mine" / "sub" / "x.bin").write_bytes(b"x")
    assert cli.main(["train", "lenet5_modern", *TINY, "--out", str(tmp_path / "mine"),
                     "--overwrite"]) == 0
    run = tmp_path / "mine"
    assert (run / "notes.txt").read_bytes() == files["notes.txt"]
    assert (run / "data.csv").read_bytes() == files["data.csv"]
    assert (run / "sub" / "x.bin").read_bytes() == b"x"
    assert json.loads((run / CONFIG).read_text())["model"] == "lenet5_modern"
    assert (run / WEIGHTS).is_file() and len((run / METRICS).read_text().splitlines()) == 1
    # now a cnnlab run: a second --overwrite keeps the user's files too
    assert cli.main(["train", "lenet5_modern", *TINY, "--out", str(run), "--overwrite"]) == 0
    assert (run / "notes.txt").read_bytes() == files["notes.txt"]


def test_events_cnnlab_did_not_write_are_not_removed(tmp_path, digits):
    user_folder(tmp_path / "mine")
    events = tmp_path / "mine" / "tensorboard" / "events.out.tfevents.1.host.1.0"
    events.parent.mkdir()
    events.write_bytes(b"someone's events")
    with pytest.raises(CnnlabError, match=r"holds TensorBoard events that cnnlab did not write "
                                          r"\(tensorboard/events.out.tfevents.1.host.1.0\); "
                                          r"move .* away, pick another --out, or pass "
                                          r"--no-tensorboard"):
        train(TrainConfig("lenet5_modern", epochs=1, out=str(tmp_path / "mine"), device="cpu"),
              progress=False, datasets=digits, overwrite=True)
    assert events.read_bytes() == b"someone's events"
    assert json.loads((tmp_path / "mine" / CONFIG).read_text()) == {"learning_rate": 3}


def test_a_run_folder_is_known_by_its_config(tmp_path, digits):
    tiny_run(tmp_path / "run", digits)
    assert is_run_config(tmp_path / "run" / CONFIG)
    assert inventory(tmp_path / "run").status == "finished"
    (tmp_path / "run" / "notes.txt").write_text("mine")         # still a run, with a note
    assert inventory(tmp_path / "run").status == "finished"
    other = tmp_path / "other"
    other.mkdir()
    for text in ("{}", '{"model": "resnet", "data": "imagenet"}', "[1, 2]", "not json",
                 json.dumps({**TrainConfig().to_dict(), "learning_rate": 1})):
        (other / CONFIG).write_text(text)
        assert not is_run_config(other / CONFIG), text
        assert inventory(other).status == "foreign"
    (other / CONFIG).unlink()
    (other / ".config.json.0123456789ab.tmp").write_text("half")  # a kill in the first write
    assert inventory(other).status == "new"


def test_a_started_run_with_user_files_restarts_and_keeps_them(tmp_path, digits):
    run = tmp_path / "run"
    run.mkdir()
    (run / CONFIG).write_text(json.dumps(TrainConfig("lenet5_modern").to_dict()))
    (run / "notes.txt").write_text("mine")
    assert inventory(run).status == "started"                # killed before a checkpoint
    tiny_run(run, digits)
    assert (run / "notes.txt").read_text() == "mine" and (run / WEIGHTS).is_file()


# -- item 2: without --out, a new folder each time -----------------------------------------

def test_without_out_each_run_gets_a_new_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("lenet5-digits", "lenet5-digits-2", "lenet5-digits-3"):
        assert cli.main(["train", "lenet5", *TINY]) == 0
        out = capsys.readouterr().out
        assert out.strip().endswith(f"run saved in {Path('runs') / name}"), out
        assert (tmp_path / "runs" / name / WEIGHTS).is_file()
    assert json.loads((tmp_path / "runs" / "lenet5-digits-3" / CONFIG).read_text())["out"] == \
        str(Path("runs") / "lenet5-digits-3")
    # an explicit --out keeps the refusal
    assert cli.main(["train", "lenet5", *TINY, "--out", "runs/lenet5-digits"]) == 2
    assert "already holds a trained model" in capsys.readouterr().err


def test_claim_never_gives_one_folder_twice(tmp_path):
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(claim(tmp_path / "runs" / "a")))
               for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(p.name for p in got)
    assert len(set(names)) == 16
    assert set(names) == {"a", *(f"a-{n}" for n in range(2, 17))}


def test_a_new_folder_is_claimed_when_the_run_starts(tmp_path, monkeypatch):
    """Not before: a run that fails first (a missing data set, say) leaves no empty folder
    behind to push the next one to -2; the parent is checked at once."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)                 # taken, empty
    folder = RunFolder(None, default="runs/x")
    assert folder.fresh and folder.path == Path("runs/x") and (tmp_path / "runs").is_dir()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["x"]
    folder.start(TrainConfig("lenet5_modern"))
    assert folder.path == Path("runs/x-2")
    assert json.loads((folder.path / CONFIG).read_text())["out"] == "runs/x-2"
    with pytest.raises(CnnlabError, match=r"resuming needs the run folder: pass --out RUN"):
        RunFolder(None, resume=True, default="runs/x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match=r"cannot create the folder for runs 'file/runs': "):
        RunFolder(None, default="file/runs/x")


# -- item 4: operating-system errors are one line, and nothing is half-written --------------

@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` read-only for real. A normal user: chmod. Root ignores permissions, so
    for root a read-only bind mount of the folder (skipped where mounting is not allowed)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "--bind", str(folder), str(folder)], capture_output=True, check=False).returncode:
        pytest.skip("running as root without the right to mount: no read-only folder to test")
    try:
        done = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)],
                              capture_output=True, check=False)
        if done.returncode:
            pytest.skip("cannot remount read-only here")
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, check=True)


@contextlib.contextmanager
def small_disk(folder: Path, kib: int):
    """A real file system of ``kib`` KiB at ``folder`` (tmpfs; root only, else skipped)."""
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)],
            capture_output=True, check=False).returncode:
        pytest.skip("no tmpfs to fill here (needs root and the right to mount)")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, check=True)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_a_read_only_parent_for_out(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    with read_only(parent):
        assert cli.main(["train", "lenet5", *TINY, "--out", str(parent / "run")]) == 2
        err = one_line_error(capsys)
        assert f"cannot create the run folder '{parent / 'run'}': " in err
        assert ("Read-only file system; the disk is read-only: use a folder on a writable "
                "disk, or pick another --out" in err or
                "Permission denied; you may not write there" in err)
    assert list(parent.iterdir()) == []


def test_a_parent_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(["train", "lenet5", *TINY, "--out", str(tmp_path / "file" / "run")]) == 2
    err = one_line_error(capsys)
    assert f"cannot create the run folder '{tmp_path / 'file' / 'run'}': Not a directory; a " \
           "part of the path is a file, not a folder: use another path, or pick another " \
           "--out" in err


def test_a_missing_parent_is_created(tmp_path):
    assert cli.main(["train", "lenet5", *TINY, "--out", str(tmp_path / "a" / "b" / "run")]) == 0
    assert (tmp_path / "a" / "b" / "run" / WEIGHTS).is_file()


def test_resuming_a_read_only_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    kill_after_first_checkpoint(run, capsys)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with read_only(run):
        assert cli.main(["train", "--resume", str(run), "--quiet"]) == 2
        err = one_line_error(capsys)
        assert f"cannot write in the run folder '{run}': " in err
        assert err.rstrip().endswith("or copy the run to a writable disk and resume the copy")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert cli.main(["train", "--resume", str(run), "--quiet"]) == 0
    assert (run / WEIGHTS).is_file()


def kill_after_first_checkpoint(run: Path, capsys) -> None:
    """Start ``run`` (2 epochs), stopped (KeyboardInterrupt) right after its first checkpoint."""
    from cnnlab.train import state as state_mod

    real, calls = state_mod.checkpoint.save, []

    def stop(path, state):
        real(path, state)
        calls.append(path)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(state_mod.checkpoint, "save", stop)
        assert cli.main(["train", "lenet5_modern", *TINY, "--epochs", "2", "--out",
                         str(run)]) == 130
    capsys.readouterr()
    assert len(calls) == 1 and (run / CHECKPOINT).is_file() and not (run / WEIGHTS).exists()


@pytest.mark.parametrize("code,advice", [
    (errno.ENOSPC, "free space on that disk"),
    (errno.EROFS, "the disk is read-only: use a folder on a writable disk"),
    (errno.EACCES, "you may not write there: fix the permissions or use another folder"),
])
def test_each_write_of_the_run_fails_in_one_line(tmp_path, capsys, monkeypatch, code, advice):
    """Simulated, as root ignores permissions: the n-th safetensors write of a run (the
    checkpoints of steps 2, 4 and 6, then the weights) raises ``code`` after half a file."""
    real = Path.write_bytes
    for n in (1, 2, 4):
        run = tmp_path / f"run{code}-{n}"
        writes: list[str] = []

        def fails(self, data, n=n, writes=writes):
            if self.name.startswith((f".{WEIGHTS}", f".{CHECKPOINT}")):
                writes.append(self.name)
                if len(writes) == n:
                    real(self, data[:100])
                    raise OSError(code, os.strerror(code))
            return real(self, data)

        monkeypatch.setattr(Path, "write_bytes", fails)
        assert cli.main(["train", "lenet5_modern", *TINY, "--checkpoint-every", "2",
                         "--out", str(run)]) == 2
        monkeypatch.setattr(Path, "write_bytes", real)
        err = one_line_error(capsys)
        assert f"{run / (WEIGHTS if n == 4 else CHECKPOINT)}: {os.strerror(code)}" in err
        assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]   # no half file
        if n == 1:
            assert not (run / CHECKPOINT).exists()
            continue
        assert checkpoint.describe(run / CHECKPOINT)["global_step"] == (2 if n == 2 else 6)
        if n == 4:
            assert err == (f"error: could not write {run / WEIGHTS}: {os.strerror(code)}; "
                           f"{advice}; then continue the run: `cnnlab train --resume {run}`\n")
            continue              # resuming after the last epoch: see the session's report
        assert cli.main(["train", "--resume", str(run), "--quiet"]) == 0
        capsys.readouterr()
        assert (run / WEIGHTS).is_file() and not (run / CHECKPOINT).exists()


def test_a_full_disk_for_real(tmp_path, capsys):
    """On a 4 MiB file system, filled right after the first checkpoint: the next write fails
    with the kernel's ENOSPC; the first checkpoint stays whole and the run resumes."""
    disk = tmp_path / "disk"
    with small_disk(disk, 4096):
        from cnnlab.train import state as state_mod

        real = state_mod.checkpoint.save

        def then_fill(path, state):
            real(path, state)
            if not (disk / "filler").exists():
                free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
                (disk / "filler").write_bytes(b"\0" * max(free - 8192, 0))

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(state_mod.checkpoint, "save", then_fill)
            code = cli.main(["train", "lenet5_modern", *TINY, "--checkpoint-every", "2",
                             "--out", str(disk / "run")])
        assert code == 2
        err = one_line_error(capsys)
        assert "No space left on device" in err and str(disk / "run") in err
        run = disk / "run"
        assert checkpoint.describe(run / CHECKPOINT)["global_step"] == 2
        assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
        (disk / "filler").unlink()
        assert cli.main(["train", "--resume", str(run), "--quiet"]) == 0
        assert (run / WEIGHTS).is_file()


# -- item 10: files follow the umask --------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_follows_the_umask(tmp_path, digits, umask):
    before = os.umask(umask)
    try:
        kill = tmp_path / "killed"
        with pytest.MonkeyPatch.context() as mp:
            from cnnlab.train import state as state_mod

            real = state_mod.checkpoint.save

            def stop(path, state):
                real(path, state)
                raise KeyboardInterrupt

            mp.setattr(state_mod.checkpoint, "save", stop)
            with pytest.raises(KeyboardInterrupt):
                tiny_run(kill, digits, checkpoint_every=1)
        tiny_run(tmp_path / "run", digits, plots=True, tensorboard=True)
        assert cli.main(["features", str(tmp_path / "run"), "--quiet"]) == 0
        files = [kill / CHECKPOINT, *(p for p in (tmp_path / "run").rglob("*") if p.is_file())]
    finally:
        os.umask(before)
    want = 0o666 & ~umask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert {CHECKPOINT, WEIGHTS, CONFIG, METRICS, "features-test-fc7.safetensors",
            "curves.png"} <= modes.keys()
    assert modes == dict.fromkeys(modes, want)


# -- item 10: features go into the run folder -----------------------------------------------

def test_features_default_into_the_run_folder(tmp_path, digits, capsys, monkeypatch):
    tiny_run(tmp_path / "run", digits)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["features", "run", "--quiet"]) == 0
    path = Path("run") / "features-test-fc7.safetensors"
    assert capsys.readouterr().out.rstrip().endswith(f"written to {path}")
    assert load_file(str(path))["features"].shape == (360, 84)
    before = path.read_bytes()
    assert cli.main(["features", "run", "--quiet"]) == 2
    assert capsys.readouterr().err == (f"error: '{path}' already exists; pick another --out, "
                                       "or pass --overwrite to replace it\n")
    assert path.read_bytes() == before
    assert cli.main(["features", "run", "--quiet", "--split", "train", "--pool", "avg",
                     "--layer", "c3", "--data", "digits"]) == 0
    assert (tmp_path / "run" / "features-train-c3-avg.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]     # nothing in the cwd


# -- item 9: weights of another model than the config are refused ---------------------------

def test_weights_of_another_model_are_refused(tmp_path, digits):
    tiny_run(tmp_path / "a", digits)
    tiny_run(tmp_path / "b", digits, model="lenet5")
    shutil.copy(tmp_path / "b" / WEIGHTS, tmp_path / "a" / WEIGHTS)
    with pytest.raises(ModelError, match=rf"{tmp_path / 'a' / WEIGHTS} holds weights of "
                                         rf"'lenet5', but {tmp_path / 'a' / CONFIG} is the config "
                                         r"of a 'lenet5_modern' run: the two files come from "
                                         r"different runs; put a run's own files together, or "
                                         r"train it again"):
        load_run(tmp_path / "a")


def test_storage_error_is_an_os_error_with_the_systems_errno():
    err = run_mod.storage_error("could not write x", OSError(errno.ENOSPC, "No space left"))
    assert isinstance(err, StorageError) and isinstance(err, OSError)
    assert (err.errno, err.strerror) == (errno.ENOSPC, "No space left")
    assert str(err) == "could not write x: No space left; free space on that disk"


def test_a_run_refused_before_it_starts_leaves_no_folder(tmp_path):
    """Refused after the folder was checked (here: a data set name the model cannot take):
    the folders made for it are gone; an existing parent and its files stay."""
    from cnnlab.train import TrainConfig, train

    (tmp_path / "mine.txt").write_text("keep")
    out = tmp_path / "a" / "b" / "run"
    cfg = TrainConfig("lenet5", data="cifar10", data_dir=str(tmp_path / "nowhere"), epochs=1,
                      out=str(out))
    with pytest.raises(CnnlabError):
        train(cfg, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_a_run_that_is_a_file_is_called_a_file(tmp_path, capsys):
    from cnnlab.cli import main

    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert main(["eval", str(tmp_path / "model.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a run folder; pass the folder that `cnnlab train --out` wrote" in err
    assert "does not exist" not in err and len(err.strip().splitlines()) == 1
