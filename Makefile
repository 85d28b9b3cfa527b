# The two commands of the README quick start.
.PHONY: setup demo test

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python -m lava_spiked

test: setup
	.venv/bin/python -m pytest
