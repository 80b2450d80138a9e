"""Fault injection: killed runs, Ctrl-C, full disks, unwritable folders, NaN losses, bad checkpoints."""
import errno
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest
import torch

import maehelpers.runs as runs_module
from maehelpers.config import make_config
from maehelpers.pretrain import pretrain
from maehelpers.train_log import NonFiniteLossError
from maehelpers.runs import CheckpointError, load_torch, read_jsonl

# A child process that pretrains the smoke config and SIGKILLs itself at a chosen moment:
#   step N  -> inside the N-th training step (mid-epoch when N is not a multiple of 8)
#   write N -> half-way through writing the N-th checkpoint_last.pt (temp file half written)
CHILD = textwrap.dedent("""
    import io, os, signal, sys
    import maehelpers.pretrain as P, maehelpers.runs as R
    from maehelpers.config import make_config
    mode, at, run_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    count = [0]
    if mode == "step":
        real_loss = P.pretrain_loss
        def loss(*a, **k):
            count[0] += 1
            if count[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_loss(*a, **k)
        P.pretrain_loss = loss
    else:
        real_write = R._atomic_write
        def atomic_write(path, write):
            if path.name == "checkpoint_last.pt":
                count[0] += 1
                if count[0] == at:
                    def half(f):
                        buf = io.BytesIO(); write(buf); data = buf.getvalue()
                        f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real_write(path, half)
            return real_write(path, write)
        R._atomic_write = atomic_write
    P.pretrain(make_config("original", "smoke", "synthetic"), run_dir, progress=False)
""")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of the smoke config: the weights every interrupted run must reach."""
    run = tmp_path_factory.mktemp("ref") / "run"
    pretrain(make_config("original", "smoke", "synthetic"), run, progress=False)
    return load_torch(run / "checkpoint_last.pt")["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("mode,at", [("step", 3), ("step", 12), ("write", 1), ("write", 2)])
def test_sigkill_then_resume_reaches_the_same_weights(tmp_path, reference, mode, at):
    run = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", CHILD, mode, str(at), str(run)], capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    ckpt = run / "checkpoint_last.pt"
    if ckpt.exists():  # whatever survived the kill is a complete, loadable checkpoint
        assert load_torch(ckpt)["step"] in (8, 16)
    if mode == "write":
        assert list(run.glob(".checkpoint_last.pt.*.tmp"))      # the half-written temp file
    pretrain(make_config("original", "smoke", "synthetic"), run, progress=False)
    assert_same_weights(load_torch(ckpt)["model"], reference)
    assert [r["step"] for r in read_jsonl(run / "log_steps.jsonl")] == list(range(1, 17))
    assert not list(run.glob(".*.tmp"))                          # stale temp files cleared


def test_ctrl_c_saves_and_exits_cleanly_then_resumes_exactly(tmp_path):
    cmd = [sys.executable, "-m", "maehelpers", "pretrain", "--preset", "smoke", "--dataset", "synthetic",
           "--runs-root", str(tmp_path), "--epochs", "40", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "original" / "checkpoint_last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in out and "--resume" in err
    stopped_at = load_torch(ckpt)["step"]
    assert 8 <= stopped_at < 320
    cfg = make_config("original", "smoke", "synthetic", overrides={"train.epochs": 40})
    pretrain(cfg, tmp_path / "original", progress=False)
    pretrain(cfg, tmp_path / "reference", progress=False)
    assert_same_weights(load_torch(ckpt)["model"], load_torch(tmp_path / "reference" / "checkpoint_last.pt")["model"])


def _fail_second_checkpoint(monkeypatch, error):
    real = runs_module._atomic_write
    count = [0]

    def flaky(path, write):
        if path.name == "checkpoint_last.pt":
            count[0] += 1
            if count[0] == 2:
                def failing(f):
                    f.write(b"partial")
                    raise error
                return real(path, failing)
        return real(path, write)
    monkeypatch.setattr(runs_module, "_atomic_write", flaky)


def test_full_disk_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, smoke_cfg):
    _fail_second_checkpoint(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(CheckpointError, match="No space left on device.*last good checkpoint_last.pt is kept"):
        pretrain(smoke_cfg, tmp_path / "run", progress=False)
    assert load_torch(tmp_path / "run" / "checkpoint_last.pt")["step"] == 8
    assert not list((tmp_path / "run").glob(".*.tmp"))
    monkeypatch.undo()
    assert pretrain(smoke_cfg, tmp_path / "run", progress=False)["status"] == "done"   # space freed: resume


def test_unwritable_run_folder_fails_before_any_work(tmp_path, monkeypatch, smoke_cfg):
    pretrain(smoke_cfg, tmp_path / "run", progress=False, stop_at_epoch=1)
    before = (tmp_path / "run" / "checkpoint_last.pt").read_bytes()

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(runs_module.tempfile, "mkstemp", denied)
    with pytest.raises(CheckpointError, match="not writable.*nothing was changed"):
        pretrain(smoke_cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoint_last.pt").read_bytes() == before
    (tmp_path / "file").write_text("x")
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="not writable"):
        pretrain(smoke_cfg, tmp_path / "file" / "run", progress=False)   # a file where a folder should be


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path, monkeypatch, smoke_cfg):
    import maehelpers.pretrain as P
    real = P.pretrain_loss
    calls = [0]

    def sometimes_nan(*args, **kwargs):
        calls[0] += 1
        total, parts, pred, mask = real(*args, **kwargs)
        return (total * float("nan") if calls[0] == 11 else total), parts, pred, mask
    monkeypatch.setattr(P, "pretrain_loss", sometimes_nan)
    with pytest.raises(NonFiniteLossError, match=r"at step 10; .*last good checkpoint is .*checkpoint_last.pt"):
        pretrain(smoke_cfg, tmp_path / "run", progress=False)
    state = load_torch(tmp_path / "run" / "checkpoint_last.pt")
    assert state["step"] == 8 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_truncated_or_foreign_checkpoint_is_refused_clearly(tmp_path, smoke_cfg):
    pretrain(smoke_cfg, tmp_path / "run", progress=False, stop_at_epoch=1)
    ckpt = tmp_path / "run" / "checkpoint_last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated, corrupted, or not a checkpoint"):
        pretrain(smoke_cfg, tmp_path / "run", progress=False)
    torch.save([1, 2, 3], ckpt)
    with pytest.raises(CheckpointError, match="not a checkpoint dictionary"):
        pretrain(smoke_cfg, tmp_path / "run", progress=False)
    other = replace(smoke_cfg, variant=replace(smoke_cfg.variant, laplacian_weight=0.1))
    pretrain(smoke_cfg, tmp_path / "run2", progress=False, stop_at_epoch=1)
    with pytest.raises(CheckpointError, match="variant.laplacian_weight: 0.0 -> 0.1"):
        pretrain(other, tmp_path / "run2", progress=False)
