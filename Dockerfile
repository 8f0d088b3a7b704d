# govlm images. Model files are not baked in: mount them (see models.toml) at /srv/govlm/models.
#
#   CPU:  docker build -t govlm:cpu .
#   CUDA: docker build -t govlm:cuda --build-arg FEATURES=cuda \
#           --build-arg BUILD_IMAGE=nvidia/cuda:12.4.1-devel-ubuntu22.04 \
#           --build-arg RUN_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 .
#         (set `device = "cuda:0"` in models.toml and run with `--gpus all`)
#
#   docker run -p 8080:8080 -v $PWD/models:/srv/govlm/models govlm:cpu

ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUN_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
ARG FEATURES=""
RUN if ! command -v cargo >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential \
      && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0; \
    fi
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin govlm ${FEATURES:+--features $FEATURES}

FROM ${RUN_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /srv/govlm govlm
WORKDIR /srv/govlm
COPY --from=build /src/target/release/govlm /usr/local/bin/govlm
COPY models.toml /srv/govlm/models.toml
COPY prompts /srv/govlm/prompts
# Batch API jobs and files (SQLite + file bytes): keep them on a volume to survive restarts.
RUN mkdir -p /srv/govlm/data && chown govlm /srv/govlm/data
VOLUME /srv/govlm/data
USER govlm
EXPOSE 8080
ENTRYPOINT ["govlm", "serve", "--config", "/srv/govlm/models.toml", "--host", "0.0.0.0", "--port", "8080", \
            "--prompts-dir", "/srv/govlm/prompts", "--data-dir", "/srv/govlm/data"]
