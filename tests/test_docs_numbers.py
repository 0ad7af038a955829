"""The numbers the README quotes are those of the files it cites: every row of a README table of
means ± standard deviations is a row of the comparison.md it links, as `vae_lab.compare` wrote it."""

import re

from tests.conftest import REPO


def test_every_table_row_of_the_readme_is_in_the_comparison_it_cites():
    readme = (REPO / "README.md").read_text()
    cited = set(re.findall(r"\((docs/comparisons/[\w/]+/comparison\.md)\)", readme))
    assert cited, "the README cites no comparison.md"
    comparisons = "\n".join((REPO / path).read_text() for path in sorted(cited))
    rows = [line for line in readme.splitlines() if line.startswith("| ") and " ± " in line]
    assert rows, "the README shows no table of means and standard deviations"
    missing = [row for row in rows if row not in comparisons.splitlines()]
    assert missing == [], f"README rows found in none of {sorted(cited)}"
