"""One run, one record: pretrain an arm (or take raw pixels), evaluate it on its split, and describe
it with its provenance (threads, load, machine, commit, date) and, on the held-out split, each
image's correctness."""
import contextlib
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..devices import cpu_name, pick_device
from ..evaluate import evaluate_run, make_scratch_run, recon_run, run_config
from ..monitor import monitor_curve
from ..pretrain import pretrain
from ..probes import POOLS, cached_features, knn_predict, linear_probe, raw_pixel_baseline
from ..runs import git_commit, pack_bits, read_jsonl, read_results, unpack_bits
from .arms import ENCODER_METRICS, METRICS, arm_config, arm_spec


class LoadMonitor:
    """Samples the 1-minute load average while a run trains, so timings taken under load are marked."""

    def __init__(self, every_s: float = 10.0):
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every_s,), daemon=True)

    def _loop(self, every_s):
        while not self._stop.wait(every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


def run_arm(arm: str, seed: int, steps: int, settings, data) -> dict:
    """Pretrain (resuming if interrupted), evaluate on settings.split and describe one (arm, seed, steps)."""
    run = Path(settings.runs_root) / settings.dataset / f"{arm}_s{seed}_{steps}"
    if arm == "random":
        cfg = arm_config("original", settings, seed, steps)
        make_scratch_run(cfg, run, seed)
        overrides, load, reused = {}, [os.getloadavg()[0]], False
    else:
        cfg = arm_config(arm, settings, seed, steps)
        overrides = arm_spec(arm, settings)[1]
        reused = read_results(run).get("status") == "done"
        with LoadMonitor() as monitor:
            if not reused:
                pretrain(cfg, run, data_root=settings.data_root, progress=not settings.quiet, device=settings.device)
        load = monitor.samples
        recon_run(run, data[1], settings.device)
    t0 = time.time()
    res = evaluate_run(run, settings.data_root, ("lp", "knn") + (("ft",) if settings.ft else ()), data=data,
                       device=settings.device, progress=False,
                       overrides={"eval.pool": "mean", **({"eval.ft_epochs": settings.ft_epochs} if settings.ft else {})})
    bits = {"correct": correctness(run, data, res, settings.device)} if settings.split == "heldout" else {}
    provenance = _provenance(load, settings.device)
    if reused:  # the pretraining's own threads, commit and load stay in its first record
        provenance = {f"eval_{k}": v for k, v in provenance.items()}
    return {"arm": arm, "variant": cfg.variant.name, "overrides": overrides, "seed": seed, "steps": steps,
            **{m: res.get(m) for m in METRICS}, **last_health(run), "monitor": monitor_curve(read_jsonl(run / "log_epochs.jsonl")),
            "ft_recipe": (res.get("ft") or {}).get("recipe"),
            "ft_epochs": settings.ft_epochs if settings.ft else None,
            "eval_time_s": round(time.time() - t0, 1), **provenance, **bits}


def correctness(run, data, res: dict, device) -> dict:
    """Per scored image, whether each probe was right, as packed bits (base64): what the bootstrap
    over test images resamples. Recomputed from the run's cached features with the same seeds, and
    checked against the recorded top-1, so the bits are the record's own predictions."""
    train, test = data
    cfg = run_config(run)
    e, device = cfg.eval, pick_device(device)
    feats = {split: cached_features(run, d, split, e.batch_size, device, False, amp=cfg.train.amp)
             for split, d in (("train", train), ("test", test))}
    out, allowed = {"n": len(test)}, bits_tolerance(device)
    for pool in POOLS:
        tr, te = feats["train"][pool], feats["test"][pool]
        right = {"knn": knn_predict(tr, train.labels, te, e.knn_k, e.knn_t, device=device) == test.labels,
                 "lp": linear_probe(tr, train.labels, te, test.labels, e.lp_epochs, e.batch_size, e.lp_lr, cfg.seed,
                                    device, False, predict=True)["pred"] == test.labels}
        for probe, ok in right.items():
            name, again = f"{probe}_top1_{pool}", 100.0 * ok.float().mean().item()
            if abs(again - res[name]) > allowed:
                raise RuntimeError(f"{run.name}: {name} recomputed {again:.4f} differs from its record {res[name]:.4f} "
                                   f"by more than {allowed}; the probe is not deterministic here")
            out[name] = pack_bits(ok)
            if again != res[name]:
                out.setdefault("recomputed_minus_record", {})[name] = again - res[name]
    ft = res.get("ft") or {}
    if ft.get("correct"):  # the fine-tuned classifier's own predictions, made when it was scored
        right = unpack_bits(ft["correct"], len(test))
        if abs(100.0 * right.mean() - res["ft_top1"]) > 1e-9:
            raise RuntimeError(f"{run.name}: fine-tuning bits give {100 * right.mean():.4f}, its record {res['ft_top1']:.4f}")
        out["ft_top1"] = ft["correct"]
    return out


def bits_tolerance(device: torch.device) -> float:
    """How far (points) recomputed bits may be from the record: none on the CPU, where every number is
    deterministic; on CUDA 0.2 (10 of 5,000 images), since TF32 matmuls and atomics may move a
    prediction that sits on a tie. What the comparison differed by is kept with the bits."""
    return 1e-9 if device.type == "cpu" else 0.2


def raw_pixel_record(settings, steps: int, data, seed: int = 0) -> dict:
    """Linear probe (its seed: `seed`) and k-NN on the normalised pixels themselves (the same value under
    both pools); on the held-out split with each image's correctness, as every record there."""
    raw = raw_pixel_baseline(arm_config("original", settings, seed, steps), *data, seed=seed, device=settings.device)
    bits = {"n": len(data[1]), **{f"{probe}_top1_{pool}": raw[f"{probe}_correct"]
                                  for probe in ("lp", "knn") for pool in POOLS}}
    return {"arm": "raw_pixels", "variant": None, "overrides": {}, "seed": seed, "steps": steps,
            **{m: None for m in METRICS}, "lp_top1_mean": raw["lp_top1"], "lp_top1_cls": raw["lp_top1"],
            "knn_top1_mean": raw["knn_top1"], "knn_top1_cls": raw["knn_top1"], **_provenance([os.getloadavg()[0]]),
            **({"correct": bits} if settings.split == "heldout" else {})}


def _provenance(load, device: str = "cpu") -> dict:
    threads = torch.get_num_threads()
    machine = torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name()
    return {"threads": threads, "load_max": round(max(load), 2), "under_load": max(load) > threads + 0.75,
            "device": device, "machine": machine, "torch": torch.__version__, "git_commit": git_commit(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}


def run_one(settings, key, prior: dict | None, data) -> dict:
    """One (arm, seed, steps): raw pixels or an arm, with the thread count of an earlier record of it,
    and refused if it adds to a record of another encoder."""
    arm, seed, steps = key
    with threads_of(prior):
        record = raw_pixel_record(settings, steps, data, seed) if arm == "raw_pixels" else run_arm(arm, seed, steps, settings, data)
    same_encoder(prior, record, key)
    return record


@contextlib.contextmanager
def threads_of(prior: dict | None):
    """Run with the thread count an earlier record of the same run was made with (a run that adds to it,
    such as fine-tuning, may have to pretrain again, and CPU results are deterministic per thread count)."""
    before = torch.get_num_threads()
    if prior and prior.get("threads"):
        torch.set_num_threads(prior["threads"])
    try:
        yield
    finally:
        torch.set_num_threads(before)


def same_encoder(prior: dict | None, record: dict, key) -> None:
    """A record that adds to an earlier one must describe the same encoder: its probe and k-NN equal the
    earlier record's, or nothing is recorded (the merged record would mix two different encoders)."""
    differ = [f"{m} {prior[m]:.4f} -> {record[m]:.4f}" for m in ENCODER_METRICS
              if prior and prior.get(m) is not None and record.get(m) != prior[m]]
    if differ:
        raise RuntimeError(f"{key}: the encoder evaluated now differs from its record ({', '.join(differ)}); "
                           "nothing recorded. Was it pretrained again with another thread count or code?")


HEALTH = ("effective_rank", "uniformity_wi", "uniformity_umae")  # pretrain.feature_health_of, last epoch


def last_health(run: Path) -> dict:
    """The feature health of a run's last epoch, from its log (empty for runs logged before it existed)."""
    rows = [r for r in read_jsonl(run / "log_epochs.jsonl") if "effective_rank" in r]
    return {k: rows[-1][k] for k in HEALTH} if rows else {}
