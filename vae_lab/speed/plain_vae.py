"""The reference for `python -m vae_lab.bench`: the article's conv VAE trained by a plain PyTorch loop,
written the way the classic examples write it (torchvision MNIST + ToTensor behind a DataLoader with
default settings, fp32, eager, nn.Dropout, nn.BatchNorm2d, Adam with defaults).

    python -m vae_lab.speed.plain_vae --data-root data --epochs 1
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import datasets, transforms


class PlainVAE(nn.Module):
    def __init__(self, latent_dim: int = 2):
        super().__init__()
        blocks = []
        for c_in, c_out, stride in ((1, 32, 1), (32, 64, 2), (64, 64, 2), (64, 64, 1)):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, stride, 1),
                nn.ReLU(),
                nn.BatchNorm2d(c_out),
                nn.Dropout(0.3),
            ]
        self.encoder = nn.Sequential(*blocks, nn.Flatten())
        self.mu = nn.Linear(64 * 7 * 7, latent_dim)
        self.log_var = nn.Linear(64 * 7 * 7, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 64 * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 64, 3, 1, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 64, 3, 2, 1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 3, 1, 1),
        )

    def forward(self, x):
        h = self.encoder(x)
        mu, log_var = self.mu(h), self.log_var(h)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        return self.decoder(z), mu, log_var


def loss_function(logits, x, mu, log_var):
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())
    return (bce + kld) / len(x)


def make_loader(data_root: str, batch_size: int = 128) -> torch.utils.data.DataLoader:
    dataset = datasets.MNIST(data_root, train=True, download=True, transform=transforms.ToTensor())
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)


class PlainTrainer:
    """Runs training steps on demand, so the benchmark can interleave it with other variants."""

    def __init__(self, data_root: str, batch_size: int = 128, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = PlainVAE().to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loader = make_loader(data_root, batch_size)
        self.batches = iter(self.loader)

    def steps(self, count: int) -> int:
        """Run `count` training steps; give back the number of images they saw."""
        self.model.train()
        images = 0
        for _ in range(count):
            try:
                x, _ = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                x, _ = next(self.batches)
            x = x.to(self.device)
            self.optimizer.zero_grad()
            logits, mu, log_var = self.model(x)
            loss = loss_function(logits, x, mu, log_var)
            loss.backward()
            self.optimizer.step()
            images += len(x)
        return images


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    trainer = PlainTrainer(args.data_root)
    for epoch in range(args.epochs):
        start = time.perf_counter()
        seen = trainer.steps(len(trainer.loader))
        print(f"epoch {epoch + 1}: {seen / (time.perf_counter() - start):.0f} images/s")
