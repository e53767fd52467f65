"""The package list; all other metadata and settings are in pyproject.toml.

configs/ and eval_prompts/ live at the top of the repository and ship inside the
package as erasure/configs and erasure/eval_prompts (see ``package-dir`` there). Each of
their subfolders is listed as a package of its own, found here so that a new folder
needs no edit: setuptools warns ("... is absent from the `packages` configuration")
about data files in a folder that is not a listed package.
"""

from setuptools import find_namespace_packages, find_packages, setup


def _mapped(folder: str, package: str) -> list[str]:
    """``package`` (the top-level ``folder``) and every subfolder of it, as packages."""
    return [package, *(f"{package}.{name}" for name in find_namespace_packages(where=folder))]


setup(
    packages=[
        *find_packages(include=["erasure", "erasure.*"]),
        *_mapped("configs", "erasure.configs"),
        *_mapped("eval_prompts", "erasure.eval_prompts"),
    ]
)
