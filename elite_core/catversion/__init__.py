"""CatVersion (Zhao et al.): the prefixed CLIP text attention, its adapter files and its training
recipe, in plain torch (docs/reference/catversion.md)."""
