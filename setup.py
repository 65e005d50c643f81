"""Build hook: copy the top-level conf/ into the package (biggait/conf) so an installed biggait has its configs.

Everything else is declared in pyproject.toml; conf/ stays at the top of the repository for users to edit.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    """build_py that also copies conf/*.yaml into <build>/biggait/conf."""

    def run(self) -> None:
        super().run()
        src = Path(__file__).resolve().parent / "conf"
        dst = Path(self.build_lib) / "biggait" / "conf"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("local", "*.pyc", "__pycache__"))


setup(cmdclass={"build_py": BuildPyWithConf})
