# legion: the runtime, its HTTP server and the PostgreSQL driver, as a non-root image.
#   docker build -t legion .
#   docker run --rm legion --help
# Agents are mounted or copied in (here: /app) and named with --app.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install '.[server,postgres]'

FROM python:3.12-slim
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 legion && mkdir /app && chown legion /app
USER legion
WORKDIR /app
# Workers drain on SIGTERM (running tasks finish or return to the queue): give them
# --drain-timeout plus a margin (terminationGracePeriodSeconds, stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["legion"]
CMD ["--help"]
