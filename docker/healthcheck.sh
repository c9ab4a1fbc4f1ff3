#!/usr/bin/env bash
# The images' HEALTHCHECK: exit 0 when actor-infer's GET /ready answers 200, 1 otherwise
# (loading, draining, gone). Plain bash (/dev/tcp), so the slim runtime image needs no curl.
# The port is ACTOR_INFER__SERVER__HTTP_PORT when set, else 8080 (configs/container.yaml).
port=${ACTOR_INFER__SERVER__HTTP_PORT:-8080}
exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null || exit 1
printf 'GET /ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
read -r -t 3 _ status _ <&3 || exit 1
[ "$status" = 200 ]
