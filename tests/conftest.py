import os
import shutil

import pytest


@pytest.fixture(scope="module")
def lab(request):
    """The namespace lab (lb.lab), up for the whole test module, torn down afterwards.

    Network mode: indirect parametrization (``@pytest.mark.parametrize("lab", ["nat"], indirect=True)``)
    or a module-level ``LAB_NETWORK = "nat"``; default "direct". Skips unless root with nsenter + nginx.
    """
    if os.geteuid() != 0 or not shutil.which("nsenter") or not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("the namespace lab needs root, nsenter and /usr/sbin/nginx")
    from lb import lab as _lab

    network = getattr(request, "param", None) or getattr(request.module, "LAB_NETWORK", "direct")
    try:
        _lab.up(network)
        yield _lab
    finally:
        _lab.down()
