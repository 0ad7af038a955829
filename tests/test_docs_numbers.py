"""The numbers the README quotes are those of the files it cites: every row of a README table of
means ± standard deviations is a row of the comparison.md it links, as `vae_lab.compare` wrote it, and
every number of a result's prose is one of the table it cites."""

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


def _blocks(text: str) -> list[str]:
    """The README's results, each from a paragraph that opens in bold to the next one or heading."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("#"):
            blocks.append([])
        elif line.startswith("**") or not blocks:
            blocks.append([line])
        else:
            blocks[-1].append(line)
    return ["\n".join(block) for block in blocks if block]


NUMBER = r"(?<![\w.])\d+\.\d+(?:e[-+]\d+)?"


def _quotes(quoted: str, value: float) -> bool:
    """Whether `quoted` is `value` as written or rounded to fewer decimals (157.4 quotes 157.40)."""
    decimals = len(quoted.partition(".")[2])
    return abs(round(value, decimals) - float(quoted)) < 10 ** -(decimals + 3)


def _in_table(quoted: str, table: str, csv_values: list[float]) -> bool:
    """`quoted` is a number of the table, as written or rounded; or the table shows it at fewer decimals
    (0.01) and one of the CSV's unrounded numbers is it (0.0119 quotes 0.012)."""
    shown = re.findall(NUMBER, table)
    if any(_quotes(quoted, float(value)) for value in shown):
        return True
    coarser = [value for value in shown if "e" not in value and _quotes(value, float(quoted))]
    return bool(coarser) and any(_quotes(quoted, value) for value in csv_values)


def test_every_number_of_a_readme_result_is_in_the_table_it_cites():
    """Every number with a decimal point in a README result that cites one table of docs/comparisons/
    is one of the numbers of that table or of the CSV files beside it, as written or rounded."""
    readme = (REPO / "README.md").read_text()
    checked = 0
    for block in _blocks(readme):
        cited = set(re.findall(r"\((docs/comparisons/[\w/]+/\w+\.md)\)", block))
        prose = re.sub(r"`[^`]*`|\([^)]*\)\]|\]\([^)]*\)|!\[[^\]]*\]", " ", block)  # commands, links
        numbers = set(re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", prose))
        if len(cited) != 1 or not numbers:
            continue
        (path,) = cited
        table = (REPO / path).read_text()
        csv_values = [
            float(value)
            for csv in sorted((REPO / path).parent.glob("*.csv"))
            for value in re.findall(NUMBER, csv.read_text())
        ]
        missing = sorted(n for n in numbers if not _in_table(n, table, csv_values))
        assert missing == [], f"README numbers found nowhere in {path}: {missing}"
        checked += 1
    assert checked, "no README result quotes numbers of a table it cites"
