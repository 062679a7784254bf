"""Classroom explorers (ipywidgets), one module per lesson; each is one function call from a notebook cell and keeps
its computation in a plain function that tests call without a browser."""
