"""I-SHEEP's prompt-free data filters on fixed statistics: perplexity, density (k-means clusters),
both."""

import numpy as np
import pandas as pd

from raysynth.recipes.isheep.config import DataFilterConfig
from raysynth.recipes.isheep.self_stats import cluster_labels, data_filter_reasons


def stats_frame() -> pd.DataFrame:
    """Two tight clusters of representations with known perplexities."""
    vectors = [[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [10.0, 10.0], [10.1, 10.0], [10.0, 10.1]]
    return pd.DataFrame({"id": [f"r{i}" for i in range(6)], "embedding": vectors,
                         "perplexity": [30.0, 5.0, 70.0, 12.0, 80.0, 3.0]})


def test_perplexity_filter_drops_above_the_cut():
    reasons = data_filter_reasons(stats_frame(), DataFilterConfig(kind="perplexity"), 0)
    assert reasons == [None, None, "perplexity_above_max", None, "perplexity_above_max", None]


def test_density_filters_sample_each_cluster():
    frame = stats_frame()
    assert sorted(cluster_labels(np.array(frame["embedding"].tolist()), 2, 0)[:3].tolist()) in ([0, 0, 0], [1, 1, 1])
    lowest = data_filter_reasons(frame, DataFilterConfig(kind="density_perplexity", clusters=2), 0)
    assert [i for i, r in enumerate(lowest) if r is None] == [1, 5]  # the lowest perplexity of each cluster
    sampled = data_filter_reasons(frame, DataFilterConfig(kind="density", clusters=2, per_cluster=2), 0)
    kept = [i for i, r in enumerate(sampled) if r is None]
    assert len(kept) == 4 and len([i for i in kept if i < 3]) == 2
    assert data_filter_reasons(frame, DataFilterConfig(kind="density", clusters=50), 0) == [None] * 6  # k capped
