"""gpuacct's written policy: the alert and recording rules (`*.rules.yml`) and the Alertmanager
routing (`alertmanager.yml`), shipped inside the package so an installed gpuacct has them."""

from pathlib import Path

RULES_DIR = Path(__file__).resolve().parent
