"""Class-conditional DCGAN: training, sampling, and generated images for the training split."""
from medbench.gan.model import Discriminator, Generator
from medbench.gan.synthetic import synthetic_split
from medbench.gan.train import generate, load_generator, quality, sample_to_npz, train_gan

__all__ = ["Discriminator", "Generator", "generate", "load_generator", "quality", "sample_to_npz",
           "synthetic_split", "train_gan"]
