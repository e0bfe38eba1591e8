"""What every method returns: :class:`Explanation`, the relevance of each input entry for one
class per image, with the score it explains."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .targets import class_scores


@dataclass
class Explanation:
    """The relevance of each input entry for one class per image.

    ``relevance`` has the shape of the inputs and sums, per image, to ``score`` (the explained
    score: the target's logit, or the sum of its map for a model with a spatial output);
    ``delta`` says how far from that it is, as Captum's convergence delta. Positive values
    support the class, negative values speak against it.
    """

    relevance: torch.Tensor
    target: torch.Tensor  # (N,) the explained class per image (-1: a target that is no class)
    score: torch.Tensor  # (N,) the explained score per image
    logits: torch.Tensor  # (N, K) or (N, K, ...) the model output
    method: str
    inputs: torch.Tensor | None = None  # the explained batch, for the pictures

    # Pictures: in Jupyter an Explanation shows itself; show() and save() elsewhere. -----

    def figure(self, images=None, max_images: int = 8):
        """A matplotlib Figure: per image (the first ``max_images``) the input, the heat map and
        the overlay, as ``relprop explain`` draws them. ``images``: the pictures as the model
        saw them (PIL images, e.g. ``relprop.images.load_image(...)`` resized and cropped);
        default: the inputs, each channel stretched to [0, 1]."""
        from .plot import explanation_figure
        return explanation_figure(self, images, max_images)

    def save(self, path, images=None, max_images: int = 8) -> None:
        """Save :meth:`figure` (PNG, PDF or SVG by the file's extension)."""
        self.figure(images, max_images).savefig(path, dpi=110)

    def show(self, images=None, max_images: int = 8) -> None:
        """Show :meth:`figure`: inline in Jupyter, else in the system's image viewer."""
        try:
            from IPython import get_ipython
            from IPython.display import Image as Picture, display
            if get_ipython() is not None and "Terminal" not in type(get_ipython()).__name__:
                display(Picture(data=self._png(images, max_images), format="png"))
                return
        except ImportError:
            pass
        import io

        from PIL import Image
        Image.open(io.BytesIO(self._png(images, max_images))).show()  # the system's viewer

    def _repr_png_(self) -> bytes | None:
        drawable = self.inputs is not None and self.inputs.dim() == 4 and self.heatmap.dim() == 3
        return self._png(None, 4) if drawable else None  # None: Jupyter shows the repr

    def _png(self, images, max_images: int) -> bytes:
        import io
        buffer = io.BytesIO()
        self.save(buffer, images, max_images)
        return buffer.getvalue()

    @property
    def heatmap(self) -> torch.Tensor:
        """(N, H, W): an image's relevance summed over its colour channels (for inputs that are
        not images, the relevance as it is)."""
        return self.relevance.sum(1) if self.relevance.dim() == 4 else self.relevance

    @property
    def positive(self) -> torch.Tensor:
        return self.relevance.clamp(min=0)

    @property
    def negative(self) -> torch.Tensor:
        return self.relevance.clamp(max=0)

    @property
    def delta(self) -> torch.Tensor:
        """(N,) sum of the relevance minus the explained score: 0 up to rounding for a method
        that conserves."""
        return self.relevance.flatten(1).sum(1) - self.score

    @property
    def probabilities(self) -> torch.Tensor:
        """(N, K) softmax over the classes' scores."""
        return class_scores(self.logits).softmax(1)
