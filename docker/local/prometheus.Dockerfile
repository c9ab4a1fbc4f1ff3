# A Prometheus image from Debian's `prometheus` package, made locally by scripts/docker-bases.sh
# where Docker Hub (prom/prometheus) cannot be reached; laid out like prom/prometheus (user
# nobody, data in /prometheus, config in /etc/prometheus/prometheus.yml) so docker/compose.yml
# runs it unchanged: PROMETHEUS_IMAGE=<this image> docker compose -f docker/compose.yml up
# Debian's build keeps its data in /var/lib/prometheus/metrics2 by default (upstream: data/ in
# the working directory); that path is a link to /prometheus here.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus \
 && chown nobody:nogroup /prometheus \
 && rm -rf /var/lib/prometheus/metrics2 \
 && ln -s /prometheus /var/lib/prometheus/metrics2
WORKDIR /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
