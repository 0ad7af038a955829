"""The article's first section: a conv autoencoder with a 2-d latent (BCE, Adam 1e-3, 20 epochs).

Its figures (reconstructions, latent scatter, samples, manifold) land in the run folder:
    python experiments/article_ae.py [more overrides, e.g. trainer.epochs=3]
"""

from _launch import launch

if __name__ == "__main__":
    launch("experiment=article_ae")
