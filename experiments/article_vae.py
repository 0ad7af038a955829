"""The article's second section: the conv VAE with a 2-d latent (784 * BCE + KL, Adam 1e-3, 10 epochs).

python experiments/article_vae.py [more overrides, e.g. trainer.epochs=3]
"""

from _launch import launch

if __name__ == "__main__":
    launch("experiment=article_vae")
