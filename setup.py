"""Ships csrc/ inside the package so an installed wheel can compile the
backend on first use against whatever torch is installed beside it."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCES = ("fake_backend.hpp", "fake_backend.cpp", "bindings.cpp")


class BuildPyWithSources(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "pytest_fakepg" / "csrc"
        target.mkdir(parents=True, exist_ok=True)
        for name in SOURCES:
            shutil.copy2(Path("csrc") / name, target / name)


setup(cmdclass={"build_py": BuildPyWithSources})
