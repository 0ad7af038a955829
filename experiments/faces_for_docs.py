"""Copy a face run's figures into a docs folder, leaving out every real face (CelebA's terms forbid
redistributing them; what the model made may be shown):

    python experiments/faces_for_docs.py outputs/celeba_vae docs/faces

copies the figures whose every image the model decoded (prior samples, interpolations, the attribute
shift, traversals) or that hold no image (the latent scatter, the curves of metrics.jsonl), and draws
reconstructions_decoded.png: the reconstructions of reconstructions.png without the test faces above
them. The run folder keeps reconstructions.png with the faces, for its owner's eyes.
"""

import argparse
import shutil
import sys
from pathlib import Path

from hydra.utils import instantiate

from vae_lab.errors import VaeLabError
from vae_lab.evaluation import inference
from vae_lab.figures import plots
from vae_lab.figures.run_figures import RECONSTRUCTED_IMAGES
from vae_lab.runs import load_run

MODEL_MADE = (  # decoded by the model, or no image at all
    "samples.png",
    "interpolation.png",
    "attribute_shift.png",
    "traversal.png",
    "latent_scatter.png",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("docs_dir", type=Path)
    args = parser.parse_args()
    try:
        run = load_run(args.run_dir)
        data = instantiate(run.config.data)
    except VaeLabError as error:
        sys.exit(f"error: {error}")
    args.docs_dir.mkdir(parents=True, exist_ok=True)
    for name in MODEL_MADE:
        if (args.run_dir / name).is_file():
            shutil.copy(args.run_dir / name, args.docs_dir / name)
            print(f"copied {name}")
    decoded = inference.reconstruct(run.model, data.test_images[:RECONSTRUCTED_IMAGES])
    title = f"reconstructions of the first {RECONSTRUCTED_IMAGES} test faces (the faces: not shown)"
    plots.plot_image_grid(decoded, args.docs_dir / "reconstructions_decoded.png", title=title)
    print("drew reconstructions_decoded.png")


if __name__ == "__main__":
    main()
