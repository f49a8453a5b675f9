# plaza-ems site controller.
#   docker build -t plaza-ems .
#   docker run --rm plaza-ems                                   # the simulated 40-connector plaza
#   docker run --rm -v /etc/plaza-ems:/config plaza-ems check-config /config/site.yaml

# The wheel is built with a C compiler so it carries the compiled allocation core.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY controller ./controller
COPY drivers ./drivers
COPY fallback ./fallback
COPY hil ./hil
COPY mpc ./mpc
COPY plaza_ems ./plaza_ems
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --home-dir /var/lib/plaza-ems --create-home plaza
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /opt/plaza-ems
COPY examples ./examples
USER plaza
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["plaza-ems"]
CMD ["run", "--scenario", "examples/load-spike.scenario.yaml", "--state-dir", "/var/lib/plaza-ems"]
