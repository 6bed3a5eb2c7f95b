# Images for users with Docker. Our own machines build the same images without Docker:
# hack/images/build.sh packs the release binaries into OCI archives.
#
#   docker build --target portcullis -t portcullis .          # operator and agent
#   docker build --target portcullis-proxy -t portcullis-proxy .
#   docker build --target echo -t portcullis-echo .           # the e2e suite's backend

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p portcullis-operator -p portcullis-dataplane -p portcullis-e2e --bins \
 && cp target/release/portcullis target/release/portcullis-proxy target/release/portcullis-echo /usr/local/bin/

FROM gcr.io/distroless/cc-debian12:nonroot AS portcullis
COPY --from=build /usr/local/bin/portcullis /portcullis
USER 65532:65532
ENTRYPOINT ["/portcullis"]

FROM gcr.io/distroless/cc-debian12:nonroot AS portcullis-proxy
COPY --from=build /usr/local/bin/portcullis-proxy /portcullis-proxy
USER 65532:65532
ENTRYPOINT ["/portcullis-proxy"]

FROM gcr.io/distroless/cc-debian12:nonroot AS echo
COPY --from=build /usr/local/bin/portcullis-echo /portcullis-echo
USER 65532:65532
ENTRYPOINT ["/portcullis-echo"]
