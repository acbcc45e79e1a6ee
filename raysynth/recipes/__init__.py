"""Recipes by config name. Each is one function `run(cfg) -> export summary`."""

from raysynth.recipes import condor, isheep, refed, synpo

RECIPES = {"condor": condor.run, "synpo": synpo.run, "isheep": isheep.run, "refed": refed.run}
