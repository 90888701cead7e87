"""The SAE trainer recovers planted features: synthetic activations built from a known
dictionary of unit directions in superposition, a few active per sample."""

import torch
from sae_lens.synthetic import ActivationGenerator, FeatureDictionary

from sae.config import SAETrainConfig
from sae.train import fit_saes, training_sae


def mean_max_cosine(true_features: torch.Tensor, decoder: torch.Tensor) -> float:
    """For each true feature, the best cosine similarity with any decoder row; averaged."""
    t = true_features / true_features.norm(dim=-1, keepdim=True)
    d = decoder / decoder.norm(dim=-1, keepdim=True)
    return (t @ d.T).max(dim=-1).values.mean().item()


def test_default_architecture_recovers_planted_features(tmp_path):
    n_features, d_in, batch = 48, 24, 1024  # twice as many features as dimensions
    torch.manual_seed(0)
    dictionary = FeatureDictionary(n_features, d_in, initializer=None, seed=0)
    generator = ActivationGenerator(
        n_features, firing_probabilities=3 / n_features, std_firing_magnitudes=0.3, mean_firing_magnitudes=1.0
    )

    def batches(start: int):
        while True:
            with torch.no_grad():
                x = dictionary(generator(batch))
            yield {"synthetic": x}

    cfg = SAETrainConfig(width=n_features, k=4, n_tokens=1500 * batch, lr=4e-3, n_checkpoints=0, autocast="off")
    sae = training_sae(cfg, d_in, "synthetic", "synthetic", seed=0)
    trained = fit_saes({"synthetic": sae}, batches, cfg, tmp_path / "ckpt", progress=False, batch_size=batch)
    mmcs = mean_max_cosine(dictionary.feature_vectors.detach(), trained["synthetic"].W_dec.detach())
    assert mmcs >= 0.9, f"mean max cosine similarity {mmcs:.3f}"
