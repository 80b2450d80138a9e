"""Run folders: atomic checkpoint writes, safe loads, merged results.json, JSON-lines logs.

A run folder (`runs/<name>/`) holds checkpoint_last.pt, encoder_pretrained.pt, results.json,
log_steps.jsonl and log_epochs.jsonl. Every write goes to a temporary file in the same folder and
is renamed over the old one, so an interrupted write never replaces the last good file.
"""
import base64
import contextlib
import hashlib
import io
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, read, or used; the message says why and what to do."""


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(f"cannot write in {path.parent} ({e.strerror}); "
                              f"{'the previous ' + path.name + ' is untouched' if path.exists() else 'nothing was written'}. "
                              "Choose a writable runs folder or free some space.") from None
    try:
        with os.fdopen(fd, "wb") as f:
            try:  # mkstemp makes 0600; run folders are meant to be shared
                os.fchmod(f.fileno(), 0o644)
            except OSError:  # some network / Drive mounts refuse it: the file is fine without
                pass
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = f"the last good {path.name} is kept" if path.exists() else f"no {path.name} was written"
            raise CheckpointError(f"writing {path} failed ({e.strerror or e}); {kept}. "
                                  "Free some disk space or choose another runs folder, then resume.") from None
        raise


def prepare_run_dir(run_dir) -> Path:
    """Create run_dir, check that it is writable, and remove temporary files that a killed write
    left behind (the files they were replacing are intact). Raises CheckpointError up front."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=run_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(f"run folder {run_dir} is not writable ({e.strerror}); nothing was changed. "
                              "Choose another --runs-root or fix its permissions.") from None
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    return run_dir


def save_torch(obj, path) -> None:
    """torch.save through a temporary file and an atomic rename."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write(path, lambda f: f.write(buf.getbuffer()))


def save_json(obj, path) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"))


def write_text(path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


LOCK_NAME = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(run_dir):
    """Hold run_dir/.lock while a process trains or evaluates in it, so two processes (two Colab
    runtimes on one Drive folder, say) cannot interleave logs and checkpoints. A lock left by a
    dead process on this machine is taken over; one from another machine must be removed by hand."""
    path, me = Path(run_dir) / LOCK_NAME, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                other = json.loads(path.read_text())
            except (OSError, ValueError):
                other = {}
            if other.get("pid") == me["pid"] and other.get("host") == me["host"]:
                yield path  # this process holds it already (a nested call)
                return
            if other.get("host") == me["host"] and not _pid_alive(int(other.get("pid", 0))):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime(other.get("since", 0)))
            raise CheckpointError(f"{run_dir} is in use by process {other.get('pid', '?')} on "
                                  f"{other.get('host', '?')} (since {since}). Wait for it to finish, or if that "
                                  f"process is gone, delete {path} and run again.") from None
    else:
        raise CheckpointError(f"cannot take the lock {path}; delete it if no process uses {run_dir}")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(me))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


# each evaluation's entry in results.json and the headline values it writes beside it; all of them
# belong to one encoder and are dropped when the run is pretrained again
HEADLINES = {"lp": ("lp_top1", "lp_top1_cls", "lp_top1_mean"), "knn": ("knn_top1", "knn_top1_cls", "knn_top1_mean"),
             "ft": ("ft_top1",), "recon": ("psnr_masked", "psnr_masked_floor", "nmse_masked", "hf_error_masked",
                                          "hf_error_floor")}
EVAL_KEYS = tuple(HEADLINES) + tuple(k for keys in HEADLINES.values() for k in keys) + ("scratch_ft_top1",)


def load_torch(path) -> dict:
    """Load a checkpoint with weights_only=True; anything else than a dict of tensors and plain
    values (for example a pickle that would run code) is refused with a CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a loadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
            "It may be truncated, corrupted, or not a checkpoint; it was not executed. "
            "Delete it to start over, or restore a good copy.") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    return obj


def read_results(run_dir) -> dict:
    path = Path(run_dir) / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def merge_results(run_dir, updates: dict) -> dict:
    """Merge `updates` into run_dir/results.json (one level deep for dict values); keep the rest."""
    results = read_results(run_dir)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(results.get(key), dict):
            results[key] = {**results[key], **value}
        else:
            results[key] = value
    save_json(results, Path(run_dir) / "results.json")
    return results


def read_jsonl(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash
            pass
    return rows


def git_commit() -> str | None:
    """HEAD's commit when the package's working tree is clean; otherwise 'dirty:<hash of the
    uncommitted change> on <commit>', so that a record never names code that it did not run."""
    try:
        git = dict(cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
        head = subprocess.run(["git", "rev-parse", "HEAD"], **git).stdout.strip()
        if not head:
            return None
        change = subprocess.run(["git", "diff", "HEAD"], **git).stdout + \
            subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal"], **git).stdout
        if not change:
            return head
        return f"dirty:{hashlib.sha1(change.encode()).hexdigest()[:12]} on {head}"
    except (OSError, subprocess.SubprocessError):
        return None


def epoch_rows(run_dir) -> list[dict]:
    """The per-epoch rows of a run's log_epochs.jsonl; the k-NN monitor's rows (monitor.py) left out."""
    return [r for r in read_jsonl(Path(run_dir) / "log_epochs.jsonl") if "loss" in r]


def pack_bits(ok) -> str:
    """Per-image booleans (a tensor or array) as packed bits in base64: what a record stores."""
    ok = ok.numpy() if hasattr(ok, "numpy") else np.asarray(ok)
    return base64.b64encode(np.packbits(ok.astype(np.uint8)).tobytes()).decode()


def unpack_bits(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)
