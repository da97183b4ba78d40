"""osgtest-dag: parameter files -> test matrix -> HTCondor VM-universe workflow -> results."""

__version__ = "0.1.0"
