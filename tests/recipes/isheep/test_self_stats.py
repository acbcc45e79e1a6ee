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


def test_self_statistics_of_a_base_model_without_a_chat_template(tmp_path):
    """The plain prompt format reaches the self-statistics: a base model without a chat template gets
    the Alpaca-style prompt the engine and training give it (the response scored after it, then the
    end-of-sequence token), where the chat form fails every row of such a model."""
    import math
    from pathlib import Path

    from raysynth.engine import plain_prompt
    from raysynth.models import resolve_model
    from raysynth.recipes.isheep.self_stats import SelfStatsActor
    from tiny_models import without_chat_template

    bare = without_chat_template(Path(resolve_model("smollm2-135m")), tmp_path / "base")
    batch = pd.DataFrame({"id": ["a", "b"], "prompt": ["Name a fruit.", "Say hello."], "response": ["Apple.", "Hello!"]})
    cfg = DataFilterConfig(kind="perplexity", num_cpus=1)
    plain = SelfStatsActor(str(bare), cfg, prompt_format="plain")
    ids, start = plain._encode("Name a fruit.", "Apple.")
    prompt = plain_prompt([{"role": "user", "content": "Name a fruit."}])
    assert prompt.endswith("### Response:\n") and "<|im_start|>" not in prompt
    assert ids == plain.tokenizer.encode(prompt + "Apple.") + [plain.tokenizer.eos_token_id]  # as TRL tokenizes it
    assert plain.tokenizer.decode(ids[:start]).endswith("### Response:\n")
    assert plain.tokenizer.decode(ids[start:], skip_special_tokens=True) == "Apple."
    stats = plain(batch)
    assert list(stats["stats_error"]) == ["", ""]
    assert all(math.isfinite(p) and p > 1 for p in stats["perplexity"]) and len(stats["embedding"][0]) > 0
    chat = SelfStatsActor(str(bare), cfg)(batch)
    assert all(chat["stats_error"]), "the chat form needs a template this model lacks"
