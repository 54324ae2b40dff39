"""Packaging for the EMISO engine."""

from setuptools import find_packages, setup

setup(
    name="emiso-engine",
    version="0.1.0",
    description=(
        "A Docker Engine API server that manages SO3 containers "
        "(Mobile Entities of the SOO framework) on a smart object"
    ),
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="GPL-2.0-only",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"],
    package_data={
        "emiso": ["samples/*.itb", "samples/qemu/*.itb"],
        "twisted": ["plugins/emiso_plugin.py"],
    },
    include_package_data=True,
    install_requires=[
        "Twisted[tls]>=26.0",
        "klein>=24.8",
        "pyOpenSSL>=24.0",
        "service-identity>=24.1",
        "attrs>=23.1",
        "fdt>=0.3.3",
        "cryptography>=42",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "treq>=24.9",
            "docker>=7.1",
            "PyYAML>=6",
            "jsonschema>=4.20",
            "hypothesis>=6.100",
        ],
    },
    entry_points={
        "console_scripts": [
            "emiso-engine = emiso.script:main",
            "emiso_engine = emiso.script:main",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
    ],
)
