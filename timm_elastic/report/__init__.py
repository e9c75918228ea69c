"""Renders the scale policy analyses (`timm_elastic.policy`) from the data its functions return:
PNG plots of the paper's Figs. 5 and 6 (`plots`)."""
from .plots import plot_class_ranking, plot_embedding, plot_improvement_density, plot_strip

__all__ = ['plot_class_ranking', 'plot_embedding', 'plot_improvement_density', 'plot_strip']
