"""An interactive reconstruction inspector for notebooks (ipywidgets).

`draw_inspector` is the plain function (papermill, tests); `Inspector` wraps it in sliders for
image index, mask ratio and mask seed and a choice of models, redrawing on every change.
"""
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

    def __init__(self, models: dict, images_u8, img_size: int):
        import ipywidgets as w
        self.models, self.images, self.img_size = models, images_u8, img_size
        self.index = w.IntSlider(0, 0, len(images_u8) - 1, description="image")
        self.ratio = w.FloatSlider(0.75, min=0.05, max=0.95, step=0.05, description="mask ratio")
        self.seed = w.IntSlider(0, 0, 99, description="mask seed")
        self.names = w.SelectMultiple(options=list(models), value=tuple(models), description="models")
        self.out = w.Output()
        self.redraws, self.psnrs = 0, {}
        for control in (self.index, self.ratio, self.seed, self.names):
            control.observe(lambda change: self.redraw(), names="value")
        self.widget = w.VBox([w.HBox([self.index, self.ratio]), w.HBox([self.seed, self.names]), self.out])
        self.redraw()

    def redraw(self):
        if not self.names.value:
            return
        fig, self.psnrs = draw_inspector(self.models, self.images, self.img_size, self.index.value,
                                         self.ratio.value, self.seed.value, list(self.names.value))
        self.redraws += 1
        with self.out:
            self.out.clear_output(wait=True)
            display(fig)
        self.figure = fig
        plt.close(fig)
