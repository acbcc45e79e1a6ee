"""Recipes by config name. Each is one function `run(cfg) -> export summary`."""

from raysynth.recipes import condor, synpo

RECIPES = {"condor": condor.run, "synpo": synpo.run}
