#!/usr/bin/python3
"""Exports scikit-learn's digits data set to digits.csv, the input of train_digits.cc.

    /usr/bin/python3 examples/cpp/data/export_digits.py > examples/cpp/data/digits.csv

Run once; the CSV is committed so that the C++ example needs no Python at run time. Each
row is one 8x8 image: 64 pixel values (integers 0..16, row by row), then its label 0..9,
in the order load_digits() gives them (train_digits.cc shuffles with its own seed).
"""

import sys

from sklearn.datasets import load_digits


def main():
    digits = load_digits()
    out = sys.stdout
    out.write("# scikit-learn's digits: 1797 8x8 images of handwritten digits, 64 pixels\n")
    out.write("# (0..16) then the label (0..9) per row. The test set of the UCI Optical\n")
    out.write("# Recognition of Handwritten Digits data (E. Alpaydin, C. Kaynak, 1998),\n")
    out.write("# https://archive.ics.uci.edu/dataset/80, CC BY 4.0, as shipped by\n")
    out.write("# scikit-learn (BSD-3-Clause). Written by export_digits.py.\n")
    for image, label in zip(digits.data, digits.target):
        out.write(",".join(str(int(v)) for v in image) + f",{int(label)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
