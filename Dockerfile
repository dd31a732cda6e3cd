# The forq image: one statically linked binary on an empty base.
#
# No base image is pulled: build the binary on the host first, then the image.
#
#   CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o forq ./cmd/forq
#   docker build -t forq .
#
# (docker-compose build does the second step; see README.md.)
#
# The image has no shell, no CA certificates and no users: just /forq and a
# writable /data for the broker's files. It runs as uid:gid 65532:65532.
FROM scratch

# scratch has no mkdir: copying a small file creates /data, owned by the
# user the broker runs as (a named volume mounted there takes that owner).
COPY --chown=65532:65532 .dockerignore /data/.keep
COPY forq /forq

USER 65532:65532
WORKDIR /data
ENV FORQ_DATA_DIR=/data
EXPOSE 4222
ENTRYPOINT ["/forq"]
CMD ["--help"]
