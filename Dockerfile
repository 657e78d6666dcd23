# chatgpt-gateway as a container: `docker compose up -d` (see compose.yaml and
# docs/self-hosting.md).
#
# Two stages: a Rust toolchain builds the release binary from source; a small
# Debian runtime holds only that binary and the CA certificates, and runs it
# as a non-root user.
#
#   BUILDER   the toolchain image           (default rust:1-slim-bookworm)
#   RUNTIME   the runtime image             (default debian:bookworm-slim)
#   PREBUILT  test-only: a path in the build context to a binary built on the
#             host, copied instead of compiling (the test suite uses it, as
#             its machines can pull no image). The runtime stage is the same.
ARG BUILDER=rust:1-slim-bookworm
ARG RUNTIME=debian:bookworm-slim

FROM ${BUILDER} AS build
WORKDIR /src
COPY . .
ARG PREBUILT=
RUN set -eu; \
    if [ -n "$PREBUILT" ]; then \
      install -D -m 0755 "$PREBUILT" /out/chatgpt-gateway; \
    else \
      cargo build --release --locked --bin chatgpt-gateway; \
      install -D -m 0755 target/release/chatgpt-gateway /out/chatgpt-gateway; \
    fi; \
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /out/ca-certificates.crt

FROM ${RUNTIME}
COPY --from=build /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/chatgpt-gateway /usr/local/bin/chatgpt-gateway
# The original's layout: the token list is /app/appsettings.json (or
# /app/tokens.json), read from the working directory; usage data lives in /data.
RUN mkdir -p /app /data && chown 10001:10001 /data
WORKDIR /app
VOLUME /data
ENV GATEWAY_LISTEN=0.0.0.0:8080 \
    LOG_FORMAT=json \
    USAGE_STORE=sqlite:/data/usage.db
USER 10001:10001
EXPOSE 8080
# Until a health endpoint exists, the gateway's own answer is the check: an
# unauthenticated request gets its JSON 401 (bash's /dev/tcp: no curl needed).
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${GATEWAY_LISTEN##*:} && printf 'GET /v1/models HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q missing_token <&3"]
# SIGTERM (docker stop) drains in-flight requests for SHUTDOWN_GRACE_SECS.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/chatgpt-gateway"]
