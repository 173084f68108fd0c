__version__ = "0.2.0"  # the one version source: pyproject reads it (tool.setuptools.dynamic)
