"""Only what pyproject.toml cannot say: a wheel records the git revision it was built from in
gpuacct/REVISION, which gpuacct.build reads (`--version`, `gpuacct_build_info`)."""

import os
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


def _revision() -> str:
    given = os.environ.get("GPUACCT_BUILD_REVISION")  # a copy of a checkout, built elsewhere
    if given:
        return given
    try:
        found = subprocess.run(["git", "-c", "safe.directory=*", "rev-parse", "--short=12",
                                "HEAD"], capture_output=True, text=True, timeout=30,
                               check=False, cwd=Path(__file__).parent)
    except OSError:  # no git: the wheel says "unknown"
        return ""
    return found.stdout.strip() if found.returncode == 0 else ""


class BuildWithRevision(build_py):
    def run(self) -> None:
        super().run()
        package = Path(self.build_lib) / "gpuacct"
        # An editable install builds no package folder: gpuacct.build asks git instead.
        revision = _revision()
        if revision and package.is_dir() and not getattr(self, "editable_mode", False):
            (package / "REVISION").write_text(revision + "\n")


setup(cmdclass={"build_py": BuildWithRevision})
