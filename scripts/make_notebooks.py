"""Write notebooks/00-06 from the cell texts below, so 01 and 02 cannot drift apart.

    python scripts/make_notebooks.py                  # write the notebooks without outputs
    python scripts/make_notebooks.py --store-outputs  # then run them on the smoke preset and keep the
                                                      # outputs of the cells tagged nbval-check-output
    python scripts/make_notebooks.py --documented-run fashion_mnist ablation  # and every cell's outputs,
                                                      # pictures included, from a real run (~40 min, CPU)
    python scripts/make_notebooks.py --study-cells    # refresh only the cells drawn from the study's
                                                      # committed records (after `study report`; seconds)
    python scripts/make_notebooks.py --repo-url https://github.com/you/fork   # the repository's address, everywhere
    python scripts/make_notebooks.py --repo-url       # the address of `git remote get-url origin`

The address lives in one place, pyproject.toml's [project.urls] Repository. While it is the
placeholder, neither the README nor the notebooks show a Colab link (it would be dead): the install
cell then asks for the repository uploaded as the folder mae/. The script also writes the README's
Colab and notebooks blocks and docs/reference.md's presets table (one list of presets: config.PRESETS).

The stored outputs are what the nbval regression test compares (pytest --nbval-lax, on the smoke
preset): the masking of the model's own code, the protocol settings, the runs found, the variant's
definition, so a regression in any of them changes a compared output.
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NB_DIR = ROOT / "notebooks"
CHECK = "nbval-check-output"
RECORDS = "study-records"   # a cell drawn from the committed study records alone (--study-cells)
PLACEHOLDER = "https://github.com/OWNER/REPO"   # pyproject.toml's address until one is set

from maehelpers.config import PRESETS, preset_summary, presets_table  # noqa: E402
from maehelpers.generated import marks, replace_block  # noqa: E402

INSTALL = '''\
# Set-up. In Colab this installs maehelpers from the repository (locally: `pip install -e .` once).
import importlib.util, pathlib, subprocess, sys
REPO_URL = "{url}"  # from pyproject.toml (scripts/make_notebooks.py); empty until the address is set
if importlib.util.find_spec("maehelpers") is None:
    if not pathlib.Path("mae").exists() and not REPO_URL:
        raise SystemExit("This copy has no repository address: upload the repository as the folder mae/ and run "
                         "this cell again (or set the address: python scripts/make_notebooks.py --repo-url URL).")
    try:
        if not pathlib.Path("mae").exists():  # an uploaded copy of the repository as mae/ is used as is
            subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, "mae"], check=True, capture_output=True, text=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "mae"], check=True, capture_output=True, text=True)
        sys.path.insert(0, "mae")
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"Installing maehelpers failed ({{(e.stderr or '').strip()[-300:]}}): check that {{REPO_URL}} "
                         "is reachable, or upload a copy of the repository as the folder mae/ and run this cell again.")'''

PARAMS = {  # name: the line of the parameters cell; each notebook declares only what it uses
    "dataset": 'dataset = "stl10"      # stl10 | fashion_mnist | cifar10 | folder | synthetic',
    "preset": f'preset = "paper"       # {" | ".join(preset_summary(p) for p in PRESETS)}',
    "data_root": 'data_root = "data"     # datasets live (or are downloaded) here',
    "runs_root": 'runs_root = "runs"     # run folders: runs/<variant>/, runs/compare/',
    "seed": "seed = 0",
    "device": 'device = "auto"        # auto: CUDA when present, else CPU (mixed precision on CUDA only)',
    "use_drive": "use_drive = None       # None: on Google Drive in Colab (runs and data outlive the runtime), local elsewhere",
    "force": "force = False          # True: redo work that is already finished",
}
DATA_PARAMS = ("dataset", "preset", "data_root", "runs_root", "seed", "device", "use_drive")
EVAL_PARAMS = ("data_root", "runs_root", "device", "use_drive", "force")  # dataset, preset, seed: each run's own

SETUP = '''\
import maehelpers as mh
from maehelpers import notebook as nb
paths = nb.setup(data_root, {runs_root}, use_drive, device)'''


URL_MARK = "@REPO_URL@"  # replaced by the address when the notebooks are built


def repo_url() -> str:
    """The repository's address: pyproject.toml's [project.urls] Repository, the one place it lives."""
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("Repository"):
            return line.split("=", 1)[1].strip().strip('"')
    raise SystemExit("pyproject.toml has no [project.urls] Repository line")


def set_repo_url(url: str) -> None:
    """Change the address in pyproject.toml, the one place it lives; the README's blocks and the
    notebooks are then written from it."""
    path = ROOT / "pyproject.toml"
    path.write_text(path.read_text().replace(f'Repository = "{repo_url()}"', f'Repository = "{url.rstrip("/")}"'))


def origin_url() -> str:
    """`git remote get-url origin` as an https address (git@github.com:you/fork.git -> https://github.com/you/fork)."""
    url = subprocess.run(["git", "remote", "get-url", "origin"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if not url:
        raise SystemExit("this clone has no remote 'origin': give the address, --repo-url https://github.com/you/repo")
    if url.startswith("git@"):
        url = "https://" + url[4:].replace(":", "/", 1)
    return url.removesuffix(".git")


def address() -> str:
    """The repository's address, or "" while it is the placeholder (no link is better than a dead one)."""
    url = repo_url()
    return "" if url == PLACEHOLDER else url


def github_path(url: str) -> str:
    return url.rstrip("/").removeprefix("https://github.com/")


SUMMARIES = {  # the README's notebooks table
    "00_data": "find or download the data; class balance, a sample, what the augmentation and the masking do",
    "01_pretrain_original": "one image through the MAE step by step; pretrain the paper's MAE; its curves and k-NN monitor",
    "02_pretrain_improved": "the same notebook with `variant = \"improved\"`, and what the variant changes",
    "03_linear_probe": "linear probe and k-NN for every run, a random encoder and raw pixels; nearest neighbours",
    "04_finetune": "fine-tune every encoder and a random one (scratch); pretrained against scratch",
    "05_visualize": "reconstructions under identical masks, three labelled views; metrics, curves, the inspector; the study's verdict",
    "06_try_your_idea": "a loss term of your own, a small study against `original` paired by seed, its interval",
}
COLAB_MARKS = marks("colab", "python scripts/make_notebooks.py")
NOTEBOOKS_MARKS = marks("notebooks", "python scripts/make_notebooks.py")
PRESETS_MARKS = marks("presets", "python scripts/make_notebooks.py")


def colab_text(url: str) -> str:
    """How to open the notebooks in Colab: with badges once the address is set, else how to set it."""
    if not url:
        return ("**Colab:** the notebooks open in Colab once the repository's address is set: `python "
                "scripts/make_notebooks.py --repo-url` (the address of `git remote get-url origin`, or give one). "
                "Until then, upload the repository as the folder `mae/` beside a notebook; its first cell installs it.")
    return (f"**Colab:** open a notebook with its badge below. Its first cell installs `maehelpers` from {url} (or "
            "from an uploaded copy of the repository as `mae/`); runs and data live on Google Drive, so a "
            "disconnected session resumes.")


def notebooks_table(url: str) -> str:
    badge = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    rows = ["| notebook | what it does |", "|---|---|"]
    for name, what in SUMMARIES.items():
        link = f" {badge}(https://colab.research.google.com/github/{github_path(url)}/blob/main/notebooks/{name}.ipynb)" \
            if url else ""
        rows.append(f"| [`{name}`](notebooks/{name}.ipynb){link} | {what} |")
    return "\n".join(rows) + "\n"


def write_docs(readme=ROOT / "README.md", reference=ROOT / "docs" / "reference.md") -> None:
    """The README's Colab and notebooks blocks, from the address; docs/reference.md's presets table."""
    replace_block(readme, colab_text(address()), COLAB_MARKS)
    replace_block(readme, notebooks_table(address()), NOTEBOOKS_MARKS)
    replace_block(reference, presets_table(), PRESETS_MARKS)


def parameters(names, extra=""):
    cell = new_code_cell("\n".join(PARAMS[n] for n in names) + ("\n" + extra if extra else ""))
    cell.metadata["tags"] = ["parameters"]
    return cell


def check(source):
    cell = new_code_cell(source)
    cell.metadata["tags"] = [CHECK]
    return cell


def md(text):
    return new_markdown_cell(text)


def code(text):
    return new_code_cell(text)


def records_code(text):
    """A cell whose output comes from the committed study records, not from the notebook's own run:
    `--study-cells` refreshes it when records arrive, without running the series."""
    cell = new_code_cell(text)
    cell.metadata["tags"] = [RECORDS]
    return cell


DOC_MARK = "<documented run>"


def documented_note(documented: dict | None) -> str:
    """The line under each title that says where the stored outputs come from."""
    if not documented:
        return ("*Outputs stored here come from `python scripts/make_notebooks.py --store-outputs` (the checked "
                "cells of a synthetic smoke run); running the notebook fills in the rest.*")
    return (f"*The outputs stored in this notebook come from `python scripts/make_notebooks.py --documented-run "
            f"{documented['dataset']} {documented['preset']}`: a real run of the whole series on a 2-core CPU "
            f"with `dataset = \"{documented['dataset']}\"`, `preset = \"{documented['preset']}\"` and the other "
            "parameters as below; the cells that show the study's committed records are drawn from those records "
            "(`--study-cells`). Running the notebook replaces them with yours.*")


def head(title, intro, names=DATA_PARAMS, extra_params=""):
    setup = SETUP.format(runs_root="runs_root" if "runs_root" in names else '"runs"')
    return [md(f"# {title}\n\n{intro}\n\n{DOC_MARK}"), code(INSTALL.format(url=URL_MARK)),
            md("**Parameters.** Change them here, or pass them with papermill "
               "(`python -m maehelpers run -p KEY VALUE`)."), parameters(names, extra_params), code(setup)]


def pretrain_notebook(variant, title, why):
    return head(title, why, DATA_PARAMS + ("force",),
                f'variant = "{variant}"\nimg_size = None      # None keeps the value of the preset\n'
                'epochs = None\nbatch_size = None\nmax_images = None    # use only the first N images') + [
        md("## What this variant is\nThe masking schedule and loss terms that define it. Everything else "
           "(model, data, optimiser, budget) is shared by all variants."),
        check("cfg = mh.make_config(variant, preset, dataset, seed,\n"
              "                     nb.overrides(img_size, epochs, batch_size, max_images))\n"
              "nb.describe_variant(cfg)"),
        md("## MAE on one image, before training\nOne real image through this variant's model, still untrained, "
           "step by step: the image is cut into patches (`patchify`); a random `noise` value per patch is sorted "
           "and the patches with the smallest values stay visible; the encoder sees only those (plus a cls "
           "token); the decoder puts a shared mask token at every removed position, adds position embeddings "
           "and predicts every patch; the loss is the mean squared error on the REMOVED patches only. The "
           "prediction is noise for now; 05 shows the trained one. Then: what this variant changes against "
           "the paper's MAE (its mask ratio over training, and any extra loss term it adds)."),
        code("steps = nb.explain(cfg, paths)"),
        check("L, visible = steps['mask'].shape[1], int((1 - steps['mask']).sum())\n"
              "print('visible patches: int(L * (1 - ratio)) =', visible == int(L * (1 - steps['mask_ratio'])))\n"
              "print('the encoder saw only those, plus cls:', steps['latent'].shape[1] == visible + 1)\n"
              "print('the loss counts removed patches only:',\n"
              "      bool(((steps['per_patch_loss'] * steps['mask']).sum() / steps['mask'].sum()).isclose(steps['loss'])))"),
        md("## Pretrain\nAdamW (0.9, 0.95), weight decay 0.05 except biases and norms, lr = blr x batch / 256, "
           "warmup then cosine. After five steps the measured speed gives the expected duration. A "
           "checkpoint is written every epoch; if this cell is stopped (or Colab disconnects) running it "
           "again resumes exactly where it stopped. A finished run is skipped."),
        code("result = nb.pretrain_variant(cfg, paths, force)\n"
             "print({k: result.get(k) for k in ('variant', 'pretrain_time_s', 'pretrain_final_loss', 'device', 'precision')})"),
        md("## Training curves\nThe masked MSE (the term every variant shares), any extra loss terms, the mask "
           "ratio and the learning rate per step, from the run's log."),
        code("from maehelpers.viz import draw_curves\ndraw_curves([paths.runs_root / cfg.variant.name]);"),
        md("The same curves live, in TensorBoard: pretraining writes every loss term, the lr, the mask ratio (and "
           "on a T4 the fp16 loss scale) and one reconstruction grid per epoch to `runs/<variant>/tensorboard/`. "
           "In Colab the cell below shows them here; elsewhere run `tensorboard --logdir runs`."),
        code("if nb.in_colab():  # Colab ships TensorBoard\n"
             "    get_ipython().run_line_magic(\"load_ext\", \"tensorboard\")\n"
             "    get_ipython().run_line_magic(\"tensorboard\", f\"--logdir {paths.runs_root}\")"),
        md("## What was written"),
        code("for f in sorted((paths.runs_root / cfg.variant.name).iterdir()):\n    print(f.name)"),
        md(f"`{variant}/checkpoint_last.pt` holds the full MAE (for resuming and reconstructions), "
           "`encoder_pretrained.pt` the encoder alone (for probing and fine-tuning), `results.json` the "
           "config, seed, device, precision, git commit and pretraining time. Next: the other pretraining "
           "notebook, then `03_linear_probe.ipynb`."),
    ]


NOTEBOOKS = {
    "00_data.ipynb": head(
        "00 · The data",
        "Locate (or download) the dataset, look at it, and see what the augmentation does. STL-10 has "
        "100,000 unlabeled 96x96 images for pretraining and 5,000 / 8,000 labelled ones (10 classes) for "
        "train / test. Without STL-10 files and without network, use `dataset = \"fashion_mnist\"` "
        "(Debian: `apt-get install dataset-fashion-mnist`) or `\"synthetic\"`. Nothing is written except "
        "the dataset download.") + [
        md("## Load the three splits\nImages are kept as uint8 tensors; pretraining never sees labels."),
        code("cfg = mh.make_config('original', preset, dataset, seed)\n"
             "pretrain_set = mh.load_dataset(dataset, 'pretrain', paths.data_root, max_images=cfg.train.max_images)\n"
             "train = mh.load_dataset(dataset, 'train', paths.data_root, max_images=cfg.eval.max_train)\n"
             "test = mh.load_dataset(dataset, 'test', paths.data_root, max_images=cfg.eval.max_test)\n"
             "for name, s in [('pretrain', pretrain_set), ('train', train), ('test', test)]:\n"
             "    print(f'{name:>8}: {len(s):6d} images of {tuple(s.images.shape[1:])}')"),
        check("print(len(train.classes), 'classes; the pretraining split has labels:', pretrain_set.labels is not None)"),
        md("## Class balance"),
        code("import matplotlib.pyplot as plt\n"
             "counts = train.labels.bincount(minlength=len(train.classes))\n"
             "plt.figure(figsize=(7, 2.5)); plt.bar(train.classes, counts); plt.xticks(rotation=30)\n"
             "plt.title('train images per class'); plt.show()"),
        md("## A sample"),
        code("from maehelpers.viz import show_images\nshow_images(train.images, train.labels, train.classes, n=16);"),
        md("## What pretraining sees\nThe same image, eight random resized crops (scale 0.2-1) with flips, "
           "resized to the model's input size, computed for the whole batch at once on the device."),
        code("import torch\nfrom maehelpers.data import augment, denormalize\n"
             "batch = augment(train.images[:1].expand(8, -1, -1, -1), cfg.model.img_size, cfg.train.crop_scale,\n"
             "                generator=torch.Generator().manual_seed(seed))\n"
             "show_images((denormalize(batch) * 255).byte(), n=8);"),
        md("## Masking, in numbers\nAt the paper's geometry (224 px, patch 16: 196 patches) and ratio 0.75, the "
           "model's own masking keeps a quarter of the patches for the encoder: this is what makes MAE cheap."),
        check("tokens = torch.zeros(1, 196, 8)\nkept, mask, _ = mh.MAE.random_masking(tokens, 0.75)\n"
              "print(f'196 patches; mask ratio 0.75 removes {int(mask.sum())} and the encoder sees {kept.shape[1]}')"),
        md("Next: `01_pretrain_original.ipynb` pretrains."),
    ],
    "01_pretrain_original.ipynb": pretrain_notebook(
        "original", "01 · Pretrain the original MAE",
        "A faithful reproduction of He et al. (2022): a fixed 75 % mask, MSE on the removed patches "
        "with per-patch normalised targets, nothing else."),
    "02_pretrain_improved.ipynb": pretrain_notebook(
        "improved", "02 · Pretrain the improved MAE",
        "The same model and budget with three additions: a curriculum on the mask ratio (0.5 -> 0.75 over "
        "the first half), a masked Laplacian high-frequency loss (weight 0.05), and a uniformity "
        "regulariser on the encoder's features (weight 0.01). Whether they help is measured in 03-05 "
        "and in the seeded study, `python -m maehelpers study` (its results: `docs/study.md`). The literature gives reasons to doubt two "
        "of them: no study reports a gain from raising the mask ratio during training (decreasing schedules "
        "helped masked language models), and PixMIM gained by REMOVING high frequencies from the target; "
        "U-MAE did report gains from uniformity."),
    "03_linear_probe.ipynb": head(
        "03 · Linear probe and k-NN",
        "How linearly separable are the frozen encoders' features? For every pretrained run, the same "
        "encoder untrained (run `scratch`) and the raw pixels, extract features of the whole labelled "
        "images once (cached in the run folder), train BatchNorm + Linear on the train split, and report "
        "top-1 on the test split at the last epoch; then a k-NN classifier (k = 20, cosine) on the same "
        "features. Both are measured on two features from one encoder pass: the cls token (the official "
        "linear probe) and the mean of the patch tokens (the feature fine-tuning and the uniformity term use). "
        "Dataset, preset and seed are each run's own.",
        EVAL_PARAMS, "lp_epochs = None     # None keeps the value of the preset\nbatch_size = None") + [
        md("## Which runs\nListed, nothing written."),
        check("print(nb.list_runs(paths))"),
        md("## The protocol"),
        check("from maehelpers.evaluate import run_config\ne = run_config(nb.pretrained_runs(paths, False)[0]).eval\n"
              "print(f'features: cls token and mean of patch tokens (headline of the study: k-NN on the mean pool); '\n"
              "      f'probe: BN + Linear, AdamW + cosine, last epoch; '\n"
              "      f'k-NN: k={e.knn_k}, T={e.knn_t}')"),
        md("## Probe every run, the random encoder and raw pixels\nResults go into each run's `results.json` "
           "with the key they were computed for (encoder, data, settings); a rerun reuses them and says so."),
        code("table = nb.evaluate_all(paths, ('lp', 'knn'), force, lp_epochs=lp_epochs, batch_size=batch_size)\n"
             "nb.show_table(table)"),
        md("## The probe's training curves\nTraining loss and test top-1 per epoch. The table reports the LAST "
           "epoch, never the best one: choosing an epoch by its test accuracy would be selection on the test set."),
        code("nb.show_probe_curves(paths);"),
        md("## What k-NN looks at\nA few test images and their nearest training images under each encoder's "
           "features (green: same class). This is what the k-NN accuracy counts."),
        code("nb.show_neighbours(paths);"),
        md("At short budgets MAE features are weak under linear probes (the paper's ViT-B at 100 epochs: "
           "46 %), so compare against the random-encoder and raw-pixel rows, and see 04 for fine-tuning."),
        md("## Where MAE starts to work\nThe study's 16,000-step stage (Fashion-MNIST, preset `ablation`, 32 times "
           "this notebook's budget; registered before its first run): each arm's k-NN monitor over its pretraining "
           "(validation images), raw pixels as lines, and the study's records as points, from 500 to 16,000 steps "
           "(each its own run). It asks where MAE passes raw pixels and training from scratch, and whether the "
           "gains seen at 500 steps survive there; `docs/study.md` gives the registered answers."),
        records_code("nb.show_long_stage();"),
    ],
    "04_finetune.ipynb": head(
        "04 · Fine-tune",
        "Train the WHOLE encoder with a classification head, for each pretrained run and from a random "
        "initialisation (the no-pretraining baseline, run `scratch`), so the table shows what pretraining "
        "bought. The two rows use different recipes on purpose: layer-wise lr decay protects pretrained "
        "lower layers, but on a random network it would starve the patch embedding of learning rate "
        "(0.75^9 ~ 0.08x), so the scratch row trains without it, as the MAE paper's from-scratch ViT. "
        "The `ft_recipe` column says which recipe each row used. The `ablation` preset fine-tunes for 20 "
        "epochs, the smallest budget at which the study saw fine-tuning pass the linear probe (the curve is "
        "at the end); `smoke` fine-tunes for 2, far from converged, so its top-1 can sit below the probe's.",
        EVAL_PARAMS, "ft_epochs = None     # None keeps the value of the preset\nbatch_size = None") + [
        md("## The recipe\nOfficial MAE fine-tuning, scaled down: global average pooling + LayerNorm + "
           "head, layer-wise lr decay, drop path, label smoothing, warmup + cosine, and the official augmentation "
           "(RandAugment, random erasing, mixup or cutmix, from `torchvision.transforms.v2`), which the short "
           "presets turn off: at a few epochs it only slows learning. 0 below means off."),
        check("from maehelpers.evaluate import run_config\ne = run_config(nb.pretrained_runs(paths, False)[0]).eval\n"
              "print(f'layer decay {e.ft_layer_decay} (scratch: {e.ft_scratch_layer_decay}), drop path {e.ft_drop_path}, '\n"
              "      f'label smoothing '\n"
              "      f'{e.ft_label_smoothing}, mixup {e.ft_mixup}, cutmix {e.ft_cutmix}, weight decay {e.ft_weight_decay}, '\n"
              "      f'RandAugment magnitude {e.ft_randaug_magnitude}, random erasing {e.ft_reprob}')"),
        md("## Fine-tune every run"),
        code("table = nb.evaluate_all(paths, ('ft',), force, ft_epochs=ft_epochs, batch_size=batch_size)\n"
             "nb.show_table(table)"),
        md("## Training curves, pretrained against scratch\nTraining loss per epoch (with label smoothing its "
           "floor is above 0)."),
        code("nb.show_ft_curves(paths);"),
        md("## How many epochs does fine-tuning need?\nWith too few epochs fine-tuning ends below the linear "
           "probe, which says more about the budget than about fine-tuning. The study measured the curve on its "
           "own setting (Fashion-MNIST, preset `ablation`, one seed, each budget its own run and schedule; "
           "`benchmarks/ft_curve.py`): fine-tuning top-1 against epochs for the pretrained encoder and for "
           "scratch, with the pretrained encoder's probe as a line. The `ablation` preset fine-tunes at the "
           "budget it names; with another dataset or preset, set `ft_epochs` from a curve of your own."),
        records_code("nb.show_ft_budget()"),
        md("From that budget on, fine-tuning ends above the linear probe, as in the paper. What this small setting "
           "does not show is the paper's other lesson: the untrained encoder, fine-tuned with its own recipe, "
           "catches up with the pretrained one and passes it on the curve's seed. With 500 pretraining steps "
           "on 28-px images, pretraining buys a much better frozen feature (the probes of 03) but not a better "
           "starting point for fine-tuning; the paper's gains come after hundreds of pretraining epochs at 224 "
           "px. The study's `ft` stage repeats the comparison with three seeds (exploratory: the budget was chosen "
           "on one of them): no advantage of pretraining detected; one above 1.8 points is ruled out "
           "(`docs/study.md`). Its 16,000-step stage fine-tunes each arm and scratch again, after 32 times "
           "more pretraining:"),
        md("## Fine-tuning after longer pretraining\nThe study's 16,000-step stage (Fashion-MNIST, preset `ablation`, 32 times "
           "this notebook's budget; registered before its first run): each arm's k-NN monitor over its pretraining "
           "(validation images), raw pixels as lines, and the study's records as points, from 500 to 16,000 steps "
           "(each its own run). It asks where MAE passes raw pixels and training from scratch, and whether the "
           "gains seen at 500 steps survive there; `docs/study.md` gives the registered answers."),
        records_code("nb.show_long_stage();"),
        md("Results are in each run's `results.json` (`ft_top1`, with the recipe and the curve under `ft`)."),
    ],
    "05_visualize.ipynb": head(
        "05 · Reconstructions, metrics and the final comparison",
        "All pretrained models reconstruct the same test images under the SAME masks. On a fixed evaluation "
        "set with fixed mask noise: `nmse_masked`, the loss in the model's own target space on removed "
        "patches (borrows nothing from the truth); `psnr_masked`, PSNR of the displayed reconstruction on "
        "removed pixels, which with norm-pix targets borrows each patch's true mean and std, so it is shown "
        "next to `psnr_masked_floor`, what a decoder that outputs zeros scores; and `hf_error_masked`, the "
        "Laplacian error inside removed patches (patch interiors, so seams and visible neighbours do not "
        "count). The table gives mean ± sd over seeds where a variant has several runs, says when it has "
        "one, and leaves unmeasured values blank (-). Pictures and the table go to `runs/compare/`.",
        EVAL_PARAMS, "live_widgets = True   # False in batch runs (papermill): the static picture only\n"
        "official_look = True  # download the official ViT-B MAE (about 450 MB, once) and show it beside ours\n"
        "pixel_target = None   # also pretrain original_pixels; None: only at the presets that train in minutes") + [
        md("## Which runs\nListed, nothing written."),
        check("print(nb.list_runs(paths))"),
        md("## A model whose reconstructions borrow nothing\nWith per-patch normalised targets (the paper's "
           "default, `norm_pix_loss`) the model predicts each hidden patch's *shape* but not its brightness or "
           "contrast; every picture of such a model, the paper's included, puts back each hidden patch's TRUE "
           "mean and std, and so borrows them from the answer. `original_pixels` is the same MAE trained to "
           "predict plain pixels: its output is its reconstruction. At the quick presets it trains here with the "
           "settings of the runs above (a few minutes on a CPU); at the others `pixel_target = True` asks for it."),
        code("nb.pixel_target_run(paths, pixel_target, force);"),
        md("## Metrics, reconstruction grid, curves, table\nEvery model gets the same images and masks. For a "
           "norm-pix model the grid shows its prediction three ways: its **output** in its target space (each "
           "patch normalised, drawn as grey ± contrast), the usual display with the **true patch statistics** "
           "(borrowed from the hidden image, so it looks better than the model is), and a reconstruction that "
           "**borrows nothing** (the patches de-normalised with the average mean and std of the image's visible "
           "patches). The pixel model needs one column. On grey images (Fashion-MNIST) flat patches come out blue "
           "in the first and last of these columns, even where the model is right: ImageNet's normalisation "
           "shifts and scales red, green and blue by different amounts, so a flat black patch, normalised, is about "
           "(-0.98, -0.37, +1.35) for red, green and blue, and that is what the model learns to predict. The "
           "output column draws it as it is; the column that borrows nothing scales it by the visible patches' "
           "average contrast, far above a flat patch's. The true-statistics column knows each patch's own "
           "contrast and turns it black again. The table puts the study's headline (k-NN on the mean pool) first."),
        code("vis = nb.visualize_all(paths, force=force)\nnb.show_table(vis['table'])"),
        code("from IPython.display import Image, display\n"
             "for name in ('recon_grid.png', 'curves.png', 'results.png'):\n"
             "    display(Image(filename=str(paths.compare / name)))"),
        md("## Inspect interactively\nA static picture first (for viewers without widgets), then the sliders: "
           "image, mask ratio, mask seed (applied when released); pick the models. Every model gets the same mask."),
        code("from maehelpers.widgets import show_inspector\n"
             "inspector = show_inspector(vis['models'], vis['images'], vis['img_size'], live=live_widgets)"),
        md("## Optional: the official MAE beside ours\nThe MAE authors publish a ViT-B checkpoint for "
           "visualisation (ImageNet, 224 px, patch 16, trained to predict plain pixels). It loads into this "
           "package's `MAE` as it is, because the parameter names are the official ones. Below, the first "
           "model above and the official one reconstruct the same images with masks over the same regions "
           "(our mask noise resampled to its 14 x 14 grid); the official model sees each image enlarged to "
           "224 px. Without a network the cell says so and the notebook goes on."),
        code("if official_look:\n    nb.show_official(vis, paths)"),
        md("## Dimensional collapse, measured\nA masked autoencoder can reconstruct well with features that use "
           "only a few directions of their space; a probe then has little to work with. At the end of every "
           "pretraining epoch the same training images are encoded and three numbers logged: the **effective "
           "rank** of the mean-pooled features (the exponential of the entropy of their normalised singular "
           "values: the number of directions in use) and the two **uniformity** measures that the study's terms "
           "optimise. A uniformity term that helps should raise the rank; if it does not, this plot says so. "
           "Beside them, the k-NN monitor of the same runs: what the features classify, epoch by epoch."),
        code("nb.show_feature_health(paths);"),
        md("## Is my difference bigger than noise?\nYou trained `original` and `improved` once each and see a "
           "difference on the headline. Each dot below is one seed's difference in the study's committed records "
           "(the same two variants, paired by seed); the shaded band is how far one seed's difference wanders "
           "from its mean, and the red line is yours. At another dataset or preset the study's spread is a guide, "
           "and the text says so."),
        code("nb.show_noise_check(paths);"),
        md("## The study's verdict, from its records\nThree lines generated from "
           "`benchmarks/results/ablation_runs.jsonl` (nothing typed, nothing recomputed): the improved variant, "
           "the arm that ranked first, and where the preregistered held-out confirmation stands. Validation "
           "numbers are exploratory (arms were chosen on them); the held-out ones say nothing until all runs are in."),
        records_code("nb.show_verdict();"),
        md("## Where MAE starts to work\nThe same study at 16,000 steps (registered before its first run): each arm's "
           "k-NN monitor over its pretraining, raw pixels as lines, and the records from 500 to 16,000 steps. "
           "`docs/study.md` gives its registered verdict, and a picture of the same images and masks reconstructed "
           "after 500 and after 16,000 steps."),
        records_code("nb.show_long_stage();"),
        md("## What was written\n`runs/compare/`: `recon_grid.png`, `curves.png` (the masked MSE that all variants "
           "share on common axes, extra terms in their own panel), `results.png`, `compare.md`, `compare.json`; "
           "every run's `results.json` now also holds the reconstruction metrics under `recon`, keyed to its encoder."),
        code("print((paths.compare / 'compare.md').read_text())"),
    ],
    "06_try_your_idea.ipynb": head(
        "06 - Try your own idea: a loss term of yours against the original MAE",
        "Published MAE variants each forked a whole codebase to add one term to the loss, and their gains are "
        "often a fraction of a point with no spread reported. Here a term is a function in a cell. This "
        "notebook defines one, checks it on one batch, trains the paper's MAE with and without it at the same "
        "seeds, and says how large the difference is, how sure we can be, and how many seeds a firmer answer "
        "needs. The study in the README was built from the same parts (`mh.study`).",
        DATA_PARAMS, "seeds = 2             # paired seeds: original and your arm train at each\n"
                     "steps = None          # pretraining steps per run; None: one epoch of the preset\n"
                     "weight = 0.1          # the weight of your term in the loss") + [
        md("## 1. Write the term\nA term receives what the objective has (`x.pred` and `x.target` in the "
           "target space, `x.mask`, the encoder's `x.tokens` after its final norm) and returns one number. The "
           "example is a **variance floor** in the spirit of VICReg (Bardes et al., 2022): for each feature "
           "dimension of the mean-pooled encoder features, the standard deviation across the batch should be at "
           "least 1; the term is the mean shortfall. It pushes against dimensional collapse, the failure the "
           "study's best arm (a uniformity term) also fights. `x.pooled()` gives the features of the whole batch "
           "(of every process under torchrun), so a term that compares samples sees all of them."),
        code("import torch\nimport torch.nn.functional as F\nfrom maehelpers.losses import register_term\n\n"
             "@register_term(\"var_floor\")\n"
             "def var_floor(x):\n"
             "    std = x.pooled(\"mean\").std(dim=0)      # (D,): spread of each feature across the batch\n"
             "    return F.relu(1.0 - std).mean()"),
        md("## 2. Check it on one batch\nA fresh model, one batch: the term must be a finite scalar and its "
           "gradient must reach the encoder (a term that only touches the decoder cannot change the features "
           "that the probes read)."),
        check("arm = (\"original\", {\"variant.extra_terms\": ((\"var_floor\", weight),)})\n"
              "cfg = mh.make_config(*arm[:1], preset, dataset, seed, arm[1])\n"
              "checked = nb.check_term(\"var_floor\", cfg, paths)\n"
              "print({k: v for k, v in checked.items() if k != 'value'})"),
        code("print(f\"value on one batch of the untrained model: {checked['value']:.4f}\")"),
        md("## 3. A small paired study\nEach seed fixes the data order, the crops, the masks and the "
           "initialisation, so `original` and your arm differ only by your term: the differences are paired by "
           "seed, which removes most of the run-to-run noise. Finished runs are reused (in Colab the records live "
           "on Drive, so a disconnect loses nothing); after each run the measured time says how long the rest "
           "takes. The headline is k-NN on the mean-pooled features, as in the study."),
        code("result = mh.study.compare({\"var_floor\": arm}, seeds=range(seed, seed + seeds), steps=steps,\n"
             "                          dataset=dataset, preset=preset, device=paths.device,\n"
             "                          records=paths.runs_root / \"study\" / \"records.jsonl\",\n"
             "                          runs_root=paths.runs_root / \"study\", data_root=paths.data_root)"),
        md("## 4. Is the difference bigger than the noise?\nEach grey dot is one seed's difference; the bar is "
           "the 95 % interval of their mean. With two or three seeds the interval is wide: the line under the "
           "picture says the smallest effect these seeds could detect, and how many seeds a narrower interval "
           "needs (from the spread measured here). A bar wholly below zero is a finding too: the idea hurts, at "
           "this weight and budget."),
        code("nb.show_paired(result)"),
        md("## 5. Next\nA longer study of the same arm runs from the command line, the term imported from a "
           "module of yours: `python -m maehelpers study run --import mymodule --arms-file arms.json --arms "
           "var_floor original --seeds 0 1 2 3 4 5 6 7 8 9`, then `python -m maehelpers study verify ...` reruns "
           "any record and compares. `python -m maehelpers study seeds --half-width 0.5` says, from the "
           "project's own records, how many seeds such a claim needs. A mask-ratio schedule of your own "
           "registers the same way (`maehelpers.masking.register_schedule`)."),
    ],
}

SMOKE = {"dataset": "synthetic", "preset": "smoke", "live_widgets": False, "official_look": False}


def build(documented: dict | None = None) -> dict:
    out = {}
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nb.metadata["colab"] = {"provenance": [], "gpuType": "T4"}
        nb.metadata["accelerator"] = "GPU"  # Colab opens the notebook on a GPU runtime
        nb.metadata["maehelpers"] = {"documented_run": documented}  # what the stored outputs come from
        for i, cell in enumerate(nb.cells):  # stable ids: diffs stay small when the text changes
            cell.id = f"{Path(name).stem[:2]}-{i:02d}"
            cell.source = cell.source.replace(URL_MARK, address()).replace(DOC_MARK, documented_note(documented))
        out[name] = nb
    return out


def execute(notebooks: dict, params: dict, tmp: Path, cwd: Path = ROOT) -> dict:
    """Run the series with papermill under `params`, in `cwd`; returns {name: {cell id: executed cell}}."""
    import papermill as pm
    done = {}
    for name, nb in notebooks.items():
        src, dst = tmp / f"in_{name}", tmp / name
        nbformat.write(nb, src)
        declared = pm.inspect_notebook(str(src))
        for attempt in range(2):  # a kernel message lost under heavy load can stall a cell: one retry
            try:
                pm.execute_notebook(str(src), str(dst), parameters={k: v for k, v in params.items() if k in declared},
                                    progress_bar=False, cwd=str(cwd), execution_timeout=1800)
                break
            except TimeoutError:
                if attempt:
                    raise
        done[name] = {c.id: c for c in nbformat.read(dst, as_version=4).cells}
    return done


PROJECT_SHOWN = "<project>"  # how the documented run's scratch folder appears in the stored outputs


def show_paths_as(executed: dict, path: str, shown: str) -> None:
    """Print-outs name the documented run's temporary folder: show it as the project folder it stands
    for, so the stored notebooks do not point at a /tmp path that no reader has."""
    for cells in executed.values():
        for cell in cells.values():
            for o in cell.get("outputs", []):
                if o.get("output_type") == "stream":
                    o["text"] = o["text"].replace(path, shown)


def keepable(outputs) -> list:
    """Outputs worth storing: no progress bars (stderr), no live widgets (GitHub cannot draw them)."""
    kept = []
    for o in outputs:
        if o.output_type == "stream" and o.name == "stderr":
            continue
        if "data" in o and "application/vnd.jupyter.widget-view+json" in o["data"]:
            continue
        kept.append(o)
    return kept


def store_outputs(notebooks: dict, documented: dict | None = None) -> None:
    """Run the series on the smoke preset and keep the outputs of the check cells (what nbval
    compares). With `documented` (dataset and preset of a real run), run the series again on them
    and keep every other cell's outputs too, pictures included; the check cells must come out the
    same under both, or the notebooks would compare something preset-dependent."""
    with tempfile.TemporaryDirectory() as tmp:
        smoke = execute(notebooks, {**SMOKE, "data_root": f"{tmp}/data", "runs_root": f"{tmp}/smoke"}, Path(tmp))
        real = None
        if documented:  # with the default folders, in a scratch project whose `data` is the repo's
            doc = Path(tmp) / "doc"
            doc.mkdir()
            (ROOT / "data").mkdir(exist_ok=True)
            (doc / "data").symlink_to(ROOT / "data")
            real = execute(notebooks, {**documented, "data_root": "data", "runs_root": "runs", "live_widgets": False},
                           doc, cwd=doc)
            show_paths_as(real, str(doc), PROJECT_SHOWN)
            grid = doc / "runs" / "compare" / "recon_grid.png"   # the front page's picture comes from this run
            if grid.exists():
                (ROOT / "docs" / "figures").mkdir(parents=True, exist_ok=True)
                shutil.copy(grid, ROOT / "docs" / "figures" / "recon_grid.png")
        for name, nb in notebooks.items():
            for count, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
                checked = CHECK in cell.metadata.get("tags", [])
                if checked and real and smoke[name][cell.id].outputs != real[name][cell.id].outputs:
                    raise SystemExit(f"{name} cell {cell.id}: the checked output depends on the preset")
                source = smoke if checked or not real else real
                cell.outputs = keepable(source[name][cell.id].outputs)
                cell.execution_count = count + 1 if cell.outputs or checked else None


def refresh_study_cells(notebooks: dict) -> None:
    """Run the cells tagged study-records alone, in a fresh kernel per notebook in the repository, and
    keep their outputs: they read the committed study records, not the series' runs, so new records
    reach the notebooks without running the series."""
    from nbclient import NotebookClient
    for nb in notebooks.values():
        tagged = [(n, c) for n, c in enumerate(c for c in nb.cells if c.cell_type == "code")
                  if RECORDS in c.metadata.get("tags", [])]
        if not tagged:
            continue
        alone = new_notebook(cells=[code("from maehelpers import notebook as nb"),
                                    *[code(c.source) for _, c in tagged]])
        NotebookClient(alone, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT)}}).execute()
        for (count, cell), done in zip(tagged, alone.cells[1:]):
            cell.outputs, cell.execution_count = keepable(done.outputs), count + 1


def committed_run() -> dict | None:
    """The documented run that the committed notebooks' outputs come from (None if none)."""
    path = NB_DIR / next(iter(NOTEBOOKS))
    return nbformat.read(path, as_version=4).metadata.get("maehelpers", {}).get("documented_run") if path.exists() else None


def keep_committed_outputs(notebooks: dict) -> None:
    """Regenerating without a run keeps every committed cell's outputs whose source is unchanged
    (a new repository address, for instance, must not wipe the pictures)."""
    for name, nb in notebooks.items():
        if not (NB_DIR / name).exists():
            continue
        old = {c.source: c for c in nbformat.read(NB_DIR / name, as_version=4).cells if c.cell_type == "code"}
        for cell in nb.cells:  # matched by source: a cell added above another must not cost it its outputs
            if cell.cell_type == "code" and cell.source in old:
                cell.outputs, cell.execution_count = old[cell.source].outputs, old[cell.source].execution_count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store-outputs", action="store_true", help="keep the outputs of the checked cells (smoke)")
    parser.add_argument("--documented-run", nargs=2, metavar=("DATASET", "PRESET"),
                        help="also keep every cell's outputs from a real run, e.g. fashion_mnist ablation")
    parser.add_argument("--study-cells", action="store_true",
                        help="refresh only the cells drawn from the committed study records, keeping the rest")
    parser.add_argument("--repo-url", nargs="?", const="origin",
                        help="set the repository's address (pyproject.toml, then README and notebooks), e.g. "
                             "https://github.com/you/your-fork; without a value, the address of git's remote 'origin'")
    args = parser.parse_args(argv)
    if args.repo_url:
        set_repo_url(origin_url() if args.repo_url == "origin" else args.repo_url)
    write_docs()
    rerun = args.store_outputs or args.documented_run
    documented = dict(zip(("dataset", "preset"), args.documented_run)) if args.documented_run else None
    notebooks = build(documented if rerun else committed_run())
    if rerun:
        store_outputs(notebooks, documented)
    else:
        keep_committed_outputs(notebooks)
    if args.study_cells and not rerun:  # a run executes these cells itself
        refresh_study_cells(notebooks)
    NB_DIR.mkdir(exist_ok=True)
    for name, nb in notebooks.items():
        nbformat.validate(nb)
        nbformat.write(nb, NB_DIR / name)
        print("wrote", NB_DIR / name)


if __name__ == "__main__":
    sys.exit(main())
