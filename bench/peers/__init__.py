"""One module per system the bench compares; bench/compare.py drives them."""
