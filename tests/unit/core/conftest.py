from .rig import rig  # noqa: F401  (the fixture)
