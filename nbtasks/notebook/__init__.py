"""The notebook layer: the only modules that import ipywidgets."""
