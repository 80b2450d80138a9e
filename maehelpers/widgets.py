"""An interactive reconstruction inspector for notebooks (ipywidgets 7.7 and 8: Colab ships 7.7).

`draw_inspector` is the plain function (papermill, tests, static pictures); `Inspector` wraps it in
sliders for image index, mask ratio and mask seed and a choice of models. Sliders redraw when
released (continuous_update=False), an error is shown in the widget's own output, and an empty
model selection says so. `show_inspector` also displays a static picture first, so a viewer where
widgets cannot run (papermill, GitHub's preview) still shows what the inspector draws.
"""
import traceback

import matplotlib.pyplot as plt
from IPython.display import display

from .viz import draw_recon_grid


def draw_inspector(models: dict, images_u8, img_size: int, index: int = 0, mask_ratio: float = 0.75,
                   mask_seed: int = 0, names=None):
    """One image under one mask, reconstructed by the chosen models; returns (figure, psnrs)."""
    chosen = {k: models[k] for k in (names or models)}
    fig, psnrs, _ = draw_recon_grid(chosen, images_u8[index:index + 1], img_size, mask_ratio, mask_seed)
    return fig, {k: float(v[0]) for k, v in psnrs.items()}


class Inspector:
    """ipywidgets front end: `Inspector(models, images_u8, img_size).widget` to display."""

    def __init__(self, models: dict, images_u8, img_size: int, draw=draw_inspector):
        import ipywidgets as w
        if not models:
            raise ValueError("the inspector needs at least one model: pretrain a variant first (01 or 02)")
        self.models, self.images, self.img_size, self.draw = models, images_u8, img_size, draw
        slider = dict(continuous_update=False)
        self.index = w.IntSlider(value=0, min=0, max=len(images_u8) - 1, description="image", **slider)
        self.ratio = w.FloatSlider(value=0.75, min=0.05, max=0.95, step=0.05, description="mask ratio", **slider)
        self.seed = w.IntSlider(value=0, min=0, max=99, description="mask seed", **slider)
        self.names = w.SelectMultiple(options=list(models), value=tuple(models), description="models")
        self.status = w.HTML()
        self.out = w.Output()
        self.redraws, self.psnrs, self.figure, self.error = 0, {}, None, None
        for control in (self.index, self.ratio, self.seed, self.names):
            control.observe(lambda change: self.redraw(), names="value")
        self.widget = w.VBox([w.HBox([self.index, self.ratio]), w.HBox([self.seed, self.names]), self.status,
                              self.out])
        self.redraw()

    def redraw(self):
        if not self.names.value:
            self.status.value = "<b>No model selected</b>: pick one or more in the list (ctrl/cmd-click)."
            self.out.clear_output()
            return
        try:
            fig, self.psnrs = self.draw(self.models, self.images, self.img_size, self.index.value,
                                        self.ratio.value, self.seed.value, list(self.names.value))
        except Exception as e:  # shown in the cell, not lost in a log
            self.error = e
            self.status.value = f"<b style='color:#b00'>Could not draw: {type(e).__name__}: {e}</b>"
            with self.out:
                self.out.clear_output()
                print(traceback.format_exc(limit=3))
            return
        self.error, self.status.value = None, ""
        self.redraws += 1
        with self.out:
            self.out.clear_output(wait=True)
            display(fig)
        self.figure = fig
        plt.close(fig)


def show_inspector(models: dict, images_u8, img_size: int, live: bool = True):
    """A static picture of the first image (for viewers without widgets), then the live inspector.
    live=False (batch runs: papermill's client can stall on widget messages) stops after the picture."""
    if not models:
        print("No pretrained model to inspect: run 01 or 02 first.")
        return None
    fig, _ = draw_inspector(models, images_u8, img_size)
    display(fig)
    plt.close(fig)
    if not live:
        print("(batch run: the static picture only; run the notebook interactively for the sliders)")
        return None
    try:
        inspector = Inspector(models, images_u8, img_size)
    except ImportError:
        print("ipywidgets is not installed: pip install 'ipywidgets>=7.7' for the interactive inspector.")
        return None
    display(inspector.widget)
    return inspector
