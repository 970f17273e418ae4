"""Expert utilisation per MoE layer and per task/modality, as in Uni-Perceiver-MoE Fig. 3."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from imp import paths


class ExpertUsage:
  """Running mean of a per-expert statistic (router probability or token share) per row.

  A row is a "<task> <modality>" label; `add` takes [moe_layers, experts] values.
  """

  def __init__(self):
    self._sums: dict[str, np.ndarray] = {}
    self._counts: dict[str, int] = {}

  def add(self, row: str, fractions: np.ndarray, count: int = 1) -> None:
    fractions = np.asarray(fractions, np.float64)
    if row in self._sums:
      self._sums[row] = self._sums[row] + fractions * count
      self._counts[row] += count
    else:
      self._sums[row] = fractions * count
      self._counts[row] = count

  def means(self) -> dict[str, np.ndarray]:
    """row -> [moe_layers, experts] mean fractions."""
    return {row: self._sums[row] / self._counts[row] for row in sorted(self._sums)}

  def __bool__(self) -> bool:
    return bool(self._sums)


def plot_expert_usage(means: Mapping[str, np.ndarray], path: paths.PathLike,
                      label: str = "fraction of tokens") -> paths.Path:
  """One heatmap per MoE layer: rows are tasks/modalities, columns experts. Writes a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from imp.analysis.plots import save_figure

  rows = list(means)
  stacked = np.stack([means[r] for r in rows])  # [rows, layers, experts]
  layers, experts = stacked.shape[1:]
  fig, axes = plt.subplots(1, layers, figsize=(2.0 + 0.5 * experts * layers, 1.0 + 0.4 * len(rows)),
                           squeeze=False)
  vmax = float(stacked.max()) or 1.0
  for layer, ax in enumerate(axes[0]):
    image = ax.imshow(stacked[:, layer], vmin=0.0, vmax=vmax, cmap="viridis", aspect="auto")
    ax.set_title(f"MoE layer {layer}")
    ax.set_xlabel("expert")
    ax.set_xticks(range(experts))
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows if layer == 0 else [""] * len(rows))
  fig.colorbar(image, ax=axes[0].tolist(), label=label)
  return save_figure(fig, path)
