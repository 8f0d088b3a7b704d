# Two entry points (see README): `make serve` and `make test`.
CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: serve test models build bench

## Install the pinned, hash-checked model files into models/ (skips what is already there).
models:
	$(PYTHON) scripts/install_models.py --reference-tokenizers

build:
	$(CARGO) build --release --bin govlm --bin govlm-eval

## Start the OpenAI-compatible server on $(HOST):$(PORT) with the models in models.toml.
serve: models build
	./target/release/govlm serve --config models.toml --host $(HOST) --port $(PORT)

$(VENV)/.installed: tests/python/requirements.txt tests/python/requirements-lm-eval.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --require-hashes -r tests/python/requirements.txt
	# lm-eval without its torch-sized declared dependencies (see the file's header).
	$(VENV)/bin/pip install --quiet --require-hashes --no-deps -r tests/python/requirements-lm-eval.txt
	touch $@

## Every test: Rust unit and end-to-end tests, then the official openai client against the server.
test: models build $(VENV)/.installed
	$(CARGO) test --release --workspace
	$(VENV)/bin/python -m pytest -q tests/python

## Single-sequence prefill/decode throughput, comparable with llama-bench (-t 2 -p 64,512 -n 64).
bench: models build
	./target/release/govlm bench models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf -p 64,512 -n 64 -r 3
