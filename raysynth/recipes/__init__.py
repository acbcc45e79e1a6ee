"""Recipes by config name. Each is one function `run(cfg) -> export summary`."""

from raysynth.recipes import condor

RECIPES = {"condor": condor.run}
