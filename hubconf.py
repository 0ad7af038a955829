"""torch.hub entry points: the trained models that ship with vae_lab (vae_lab/pretrained).

    model = torch.hub.load("path/to/vae_lab", "article_vae", source="local")   # eval mode, float32

Each gives back the model alone; vae_lab.load_pretrained(name) gives its config and summary too.
"""

dependencies = ["torch", "hydra", "omegaconf"]


def _model(name: str):
    from vae_lab.pretrained import load_pretrained

    return load_pretrained(name).model


def article_ae():
    """The article's conv autoencoder: 2-d latent, 20 epochs on MNIST."""
    return _model("article_ae")


def article_vae():
    """The article's conv VAE: 2-d latent, 10 epochs on MNIST."""
    return _model("article_vae")


def ae_16d():
    """The article's conv autoencoder with a 16-d latent, 20 epochs on MNIST."""
    return _model("ae_16d")


def vae_16d():
    """The article's conv VAE with a 16-d latent, 10 epochs on MNIST."""
    return _model("vae_16d")
