"""The web's fixture too: a test here checks the GPUs page against `gpuacct gpus`."""

from tests.web.conftest import start_web  # noqa: F401 (fixtures)
