"""``python -m elite_core.convert``: the documented command, kept as an alias of
``python -m elite_core.elite.convert`` (the converter of ELITE's mapper files)."""

from .elite.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
