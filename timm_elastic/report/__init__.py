"""Renders the scale policy analyses (`timm_elastic.policy`) from the data its functions return:
PNG plots of the paper's Figs. 5 and 6 (`plots`) and the interactive HTML page of Appendix C (`page`)."""
from .page import check_page_data, render_page, write_page
from .plots import plot_class_ranking, plot_embedding, plot_improvement_density, plot_strip

__all__ = ['plot_class_ranking', 'plot_embedding', 'plot_improvement_density', 'plot_strip', 'render_page',
           'write_page', 'check_page_data']
