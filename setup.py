"""The package list, which pyproject.toml cannot state: the code under src/ (hydra_plugins is a namespace package,
no __init__.py: Hydra finds the gpu_pool launcher in it) plus the top-level conf/, installed as diffusion_lab.conf
(its folder and package data are mapped in pyproject.toml). Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages("src", include=["diffusion_lab*", "hydra_plugins*"]), "diffusion_lab.conf"])
