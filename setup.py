"""The wheel carries the repository's top-level `configs/` and `prompts/` as erase/data/configs and
erase/data/prompts (erase.resources finds either), so they have one source and still ship."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("configs", "prompts")


class BuildPyWithShippedData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout's folders
            return
        root = Path(__file__).resolve().parent
        for name in SHIPPED:
            if (root / name).is_dir():
                shutil.copytree(root / name, Path(self.build_lib) / "erase" / "data" / name, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithShippedData})
