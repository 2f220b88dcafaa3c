"""Ships csrc/ inside the package so an installed wheel can compile the
backend on first use against whatever torch is installed beside it."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithSources(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "pytest_fakepg" / "csrc"
        target.mkdir(parents=True, exist_ok=True)
        # Every file of csrc/ but dotfiles: the backend picks its sources from
        # these by suffix (pytest_fakepg/_backend.py, source_files).
        for path in sorted(Path("csrc").iterdir()):
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, target / path.name)


setup(cmdclass={"build_py": BuildPyWithSources})
