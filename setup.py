# The cffi module in cext/ is built by the package install (pip install -e . included);
# bpf/ (the XDP programs' C sources) is copied into the package as lb/bpf, where
# lb.dataplane.layout finds it with importlib.resources (a checkout's bpf/ is the fallback).
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithBpf(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return                       # an editable install reads the checkout's bpf/
        dest = Path(self.build_lib) / "lb" / "bpf"
        dest.mkdir(parents=True, exist_ok=True)
        for src in sorted(Path("bpf").glob("*.[ch]")):
            shutil.copy2(src, dest / src.name)


setup(cffi_modules=["cext/build_bpfbatch.py:ffibuilder"], cmdclass={"build_py": BuildPyWithBpf})
